"""Fixtures of the inspection tests: every benign model saved both ways (once per session), a canary path."""

from __future__ import annotations

import warnings

import keras
import pytest

from tests.engine.inspection.benign import BENIGN, compile_model


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """Every benign model, compiled with adam + sparse_categorical_crossentropy + accuracy, saved both ways."""
    d = tmp_path_factory.mktemp("benign")
    out = {}
    keras.utils.set_random_seed(0)
    for name, build in BENIGN.items():
        model = compile_model(build())
        for ext in ("keras", "h5"):
            path = d / f"{name}.{ext}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.save(path)
            out[name, ext] = (path, model)
    return out


@pytest.fixture
def canary(tmp_path):
    return tmp_path / "canary" / "CANARY"
