"""The model zoo of the structured-pruning tests (`models.BUILDERS`), built once per test module."""

from __future__ import annotations

import keras
import pytest

from tests.engine.structured import models as M


@pytest.fixture(scope="module")
def zoo():
    keras.utils.set_random_seed(0)
    return {name: build() for name, build in M.BUILDERS.items()}
