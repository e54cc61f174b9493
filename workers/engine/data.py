"""Load a dataset (.npz) and check that it fits the model and the loss before any training starts.

Public API::

    load_dataset(path, model, loss, validation_fraction, seed) -> Dataset
    ARRAY_NAMES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")

The file is first checked by `inspection.inspect_npz` (plain numeric .npy members, headers within limits; no pickle
can hide in it) and then read with ``np.load(allow_pickle=False)``.

Rules (each violation raises a DataError naming the array and what is wrong):

* Arrays: ``x_train`` and ``y_train`` are required; ``x_val`` and ``y_val`` are optional but come together, and so
  do ``x_test`` and ``y_test``.
  Any other array is **refused** (not ignored): a misspelt ``x_valid`` would otherwise silently fall back to a
  held-out split and the reported accuracy would be measured on different data than the user meant.
* Without ``x_val``/``y_val`` a held-out set is taken from the training arrays: a permutation seeded by the job
  seed, ``round(n * validation_fraction)`` samples (at least 1, leaving at least 1 to train on). Both
  parts keep the file's order. ``Dataset.split`` records which case applied.
* The held-out set (x_val) is what the job decides on: budget trials, sensitivity rows, pruned-or-fine-tuned,
  retries. ``x_test``/``y_test`` are never used for any of that, nor to train or calibrate: the job only measures
  the model on them before and after, which gives a figure its choices did not bias (``Dataset.x_test`` is None
  without them).
* Inputs: integer or float arrays (no bool); the sample shape must equal the model input's shape, where a
  ``None`` dimension of the model matches anything. Float models get float32 (uint8 images are cast *as
  stored*: 0..255 stays 0..255, nothing is rescaled); models with an integer input (e.g. Embedding) require
  integer x and keep it. Single-input, single-output models only.
* Every array: at least one sample and no empty dimension; x_train and y_train (and x_val and y_val, x_test and
  y_test) have the same number of samples; the training set has at least 2 samples; no NaN or Inf.
* Labels follow the loss (`model_io.LOSSES[loss].label_form`):

  ==========  ==================================  =========================================================
  form        losses                              labels
  ==========  ==================================  =========================================================
  sparse      sparse_categorical_crossentropy     integer class ids 0..units-1 (whole-number floats
                                                  accepted); shape (n,) or (n, 1), or the output's shape
                                                  without its class axis (per-position classes)
  onehot      categorical_crossentropy            rows of the output's shape, values in [0, 1], summing to 1
  binary      binary_crossentropy                 values in [0, 1] of the output's shape ((n,) for 1 unit)
  regression  mse, mae, huber and their aliases   the output's shape ((n,) for 1 unit), any finite value
  ==========  ==================================  =========================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from workers.engine.errors import DataError, SpecError
from workers.engine.inspection import InspectLimits, inspect_npz
from workers.engine.model_io import LOSSES, output_activation, output_units

__all__ = ["ARRAY_NAMES", "Dataset", "load_dataset"]

ARRAY_NAMES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
X_DTYPE_KINDS = {"i": "signed integer", "u": "unsigned integer", "f": "float"}
Y_DTYPE_KINDS = {"b": "bool", **X_DTYPE_KINDS}
ONE_HOT_TOLERANCE = 1e-3


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    label_form: str  # "sparse" | "onehot" | "binary" | "regression"
    num_classes: int | None  # None for regression
    split: str = "given"  # "given": x_val/y_val came with the file; "held_out": taken from x_train
    x_test: np.ndarray | None = None  # measured before and after only (module docstring)
    y_test: np.ndarray | None = None


# --------------------------------------------------------------------------- the model's side


@dataclass(frozen=True)
class _Target:
    """What the model expects: its input sample shape and dtype, its output sample shape and activation."""

    input_name: str
    input_shape: tuple[int | None, ...]
    input_is_float: bool
    output_shape: tuple[int | None, ...]
    units: int | None
    activation: str | None

    def output_words(self) -> str:
        act = self.activation or "unknown-activation"
        if act == "linear":
            act = "linear (logits)"
        return f"{self.units}-unit {act} output"


def _target(model: keras.Model) -> _Target:
    inputs, outputs = list(model.inputs), list(model.outputs)
    if len(inputs) != 1:
        names = ", ".join(repr(getattr(t, "name", "?")) for t in inputs)
        raise DataError(
            f"model '{model.name}' has {len(inputs)} inputs ({names}); a dataset holds one x array, "
            "so multi-input models are not supported"
        )
    if len(outputs) != 1:
        raise DataError(
            f"model '{model.name}' has {len(outputs)} outputs; a dataset holds one y array, "
            "so multi-output models are not supported"
        )
    dtype = str(getattr(inputs[0], "dtype", "float32"))
    return _Target(
        input_name=str(getattr(inputs[0], "name", "input")),
        input_shape=tuple(inputs[0].shape[1:]),
        input_is_float="float" in dtype,
        output_shape=tuple(outputs[0].shape[1:]),
        units=output_units(model),
        activation=output_activation(model),
    )


def _shape_matches(actual: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(actual) == len(expected) and all(e is None or a == e for a, e in zip(actual, expected))


def _fmt(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- array checks


def _where(flat_index: int, shape: tuple[int, ...]) -> str:
    idx = np.unravel_index(int(flat_index), shape)
    return ", ".join(str(int(i)) for i in idx)


def _check_finite(name: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        value = a.reshape(-1)[first]
        raise DataError(
            f"{name} contains {int(bad.sum())} NaN/Inf value(s); the first is "
            f"{name}[{_where(first, a.shape)}] = {value}"
        )


def _check_x(name: str, x: np.ndarray, target: _Target) -> np.ndarray:
    if x.dtype.kind not in X_DTYPE_KINDS:
        raise DataError(f"{name} has dtype {x.dtype}; inputs must be integer or float arrays")
    sample = tuple(x.shape[1:])
    if not _shape_matches(sample, target.input_shape):
        hint = ""
        if _shape_matches((*sample, 1), target.input_shape):
            hint = f"; add a channel axis (x[..., None]) to get {_fmt((*sample, 1))}"
        raise DataError(
            f"{name} has sample shape {_fmt(sample)} but model input '{target.input_name}' expects "
            f"{_fmt(target.input_shape)} (None matches any size){hint}"
        )
    if not target.input_is_float:
        if x.dtype.kind == "f":
            raise DataError(
                f"{name} has dtype {x.dtype} but model input '{target.input_name}' takes integers "
                "(e.g. token ids); store x as an integer array"
            )
        return x
    _check_finite(name, x)
    out = _as_float32(x)
    if x.dtype.kind == "f" and x.dtype.itemsize > 4:
        _check_finite(f"{name} (as float32)", out)
    return out


def _as_float32(a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported by _check_finite
        return a.astype("float32", copy=False)


def _labels_as_ints(name: str, y: np.ndarray, loss: str) -> np.ndarray:
    if y.dtype.kind in "iu":
        return y
    if y.dtype.kind == "f":
        fractional = y != np.round(y)
        if fractional.any():
            first = int(np.flatnonzero(fractional)[0])
            raise DataError(
                f"{name}[{_where(first, y.shape)}] = {y.reshape(-1)[first]} is not a whole class id; "
                f"{loss} needs integer class ids"
            )
        return y.astype("int64")
    raise DataError(f"{name} has dtype {y.dtype}; {loss} needs integer class ids")


def _check_sparse(name: str, y: np.ndarray, target: _Target, loss: str) -> np.ndarray:
    units = target.units
    if units is None or units < 2:
        raise DataError(
            f"{loss} needs an output with one unit per class (at least 2); the model has a {target.output_words()}"
        )
    positions = target.output_shape[:-1]
    sample = tuple(y.shape[1:])
    if not (_shape_matches(sample, positions) or _shape_matches(sample, (*positions, 1))):
        hint = ""
        if _shape_matches(sample, target.output_shape) and sample and sample[-1] == units:
            hint = "; it looks one-hot encoded: use loss categorical_crossentropy or store class ids"
        raise DataError(
            f"{name} has sample shape {_fmt(sample)}; {loss} with a model output of shape "
            f"{_fmt(target.output_shape)} needs class ids of shape {_fmt(positions)}{hint}"
        )
    y = _labels_as_ints(name, y, loss)
    outside = (y < 0) | (y >= units)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{name}[{_where(first, y.shape)}] = {y.reshape(-1)[first]} is outside 0..{units - 1} for a "
            f"{target.output_words()} ({int(outside.sum())} label(s) out of range)"
        )
    return y


def _check_output_shaped(name: str, y: np.ndarray, target: _Target, what: str) -> tuple[int, ...]:
    """The shape `y` takes for the model: the output's sample shape ((n,) becomes (n, 1) for a 1-unit output)."""
    sample = tuple(y.shape[1:])
    if _shape_matches(sample, target.output_shape):
        return y.shape
    if target.output_shape == (1,) and sample == ():
        return (len(y), 1)
    raise DataError(
        f"{name} has sample shape {_fmt(sample)} but the model output has shape {_fmt(target.output_shape)}; {what}"
    )


def _in_unit_interval(name: str, y: np.ndarray, loss: str) -> None:
    outside = (y < 0) | (y > 1)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{name}[{_where(first, y.shape)}] = {y.reshape(-1)[first]} is outside [0, 1]; {loss} "
            "needs targets between 0 and 1"
        )


def _check_onehot(name: str, y: np.ndarray, target: _Target, loss: str) -> np.ndarray:
    if y.dtype.kind not in Y_DTYPE_KINDS:
        raise DataError(f"{name} has dtype {y.dtype}; {loss} needs numeric one-hot rows")
    if y.ndim == 1 and len(target.output_shape) == 1 and (target.units or 0) > 1:
        raise DataError(
            f"{name} holds one value per sample (class ids?) but {loss} needs one-hot rows of "
            f"{target.units} values; use loss sparse_categorical_crossentropy or one-hot encode it"
        )
    _check_output_shaped(name, y, target, f"{loss} needs one-hot rows of the output's shape")
    _check_finite(name, y)
    y = y.astype("float32")
    _in_unit_interval(name, y, loss)
    sums = y.sum(axis=-1)
    wrong = np.abs(sums - 1.0) > ONE_HOT_TOLERANCE
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        raise DataError(
            f"{name}[{_where(first, sums.shape)}] sums to {sums.reshape(-1)[first]:g}; {loss} needs "
            f"one-hot (or probability) rows summing to 1 ({int(wrong.sum())} row(s) do not)"
        )
    return y


def _check_binary(name: str, y: np.ndarray, target: _Target, loss: str) -> np.ndarray:
    if y.dtype.kind not in Y_DTYPE_KINDS:
        raise DataError(f"{name} has dtype {y.dtype}; {loss} needs 0/1 targets")
    shape = _check_output_shaped(name, y, target, f"{loss} needs one target in [0, 1] per output unit")
    _check_finite(name, y)
    y = y.astype("float32")
    _in_unit_interval(name, y, loss)
    return y.reshape(shape)


def _check_regression(name: str, y: np.ndarray, target: _Target, loss: str) -> np.ndarray:
    if y.dtype.kind not in X_DTYPE_KINDS:
        raise DataError(f"{name} has dtype {y.dtype}; {loss} needs numeric targets")
    shape = _check_output_shaped(name, y, target, f"{loss} needs targets of the output's shape")
    _check_finite(name, y)
    out = _as_float32(y)
    _check_finite(f"{name} (as float32)", out)
    return out.reshape(shape)


LABEL_CHECKS: dict[str, Callable[[str, np.ndarray, _Target, str], np.ndarray]] = {
    "sparse": _check_sparse,
    "onehot": _check_onehot,
    "binary": _check_binary,
    "regression": _check_regression,
}


def _num_classes(form: str, target: _Target) -> int | None:
    if form == "regression":
        return None
    if form == "binary" and target.units == 1:
        return 2
    return target.units


# --------------------------------------------------------------------------- the file


def _check_names(path: Path, header: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    unknown = sorted(set(header) - set(ARRAY_NAMES))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, ARRAY_NAMES, n=1, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise DataError(
            f"{path.name} holds array(s) {', '.join(hints)} that are not used; a dataset holds only "
            f"{', '.join(ARRAY_NAMES)} (remove the others so nothing is silently ignored)"
        )
    for required in ("x_train", "y_train"):
        if required not in header:
            raise DataError(f"{path.name} has no array {required!r}; found {sorted(header) or 'none'}")
    for x, y in (("x_val", "y_val"), ("x_test", "y_test")):
        if (x in header) != (y in header):
            present, missing = (x, y) if x in header else (y, x)
            raise DataError(f"{path.name} has {present!r} but no {missing!r}; give both or neither")
    for name, (shape, _dtype) in header.items():
        if len(shape) == 0:
            raise DataError(f"{name} is a scalar; it needs one entry per sample along its first axis")
        if 0 in shape:
            raise DataError(f"{name} is empty (shape {_fmt(shape)})")


def _pair(x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise DataError(f"{x_name} has {len(x)} samples but {y_name} has {len(y)}")


def _held_out_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    n = len(x)
    n_val = min(max(int(round(n * fraction)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def load_dataset(
    path: str | Path,
    model: keras.Model,
    loss: str,
    validation_fraction: float,
    seed: int,
    limits: InspectLimits | None = None,
) -> Dataset:
    """Read and validate `path` against `model` and `loss`; split off a validation set when none is given
    (`validation_fraction` of x_train, 0 < f < 1, chosen by a permutation seeded by `seed`)."""
    path = Path(path)
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0 < validation_fraction < 1
    ):
        raise SpecError(
            f"training.validation_fraction must satisfy 0 < f < 1, got {validation_fraction!r}",
            field="training.validation_fraction",
        )
    kind = LOSSES.get(loss)
    if kind is None:
        raise DataError(f"cannot check labels for loss '{loss}'; supported: {', '.join(sorted(LOSSES))}")
    header = inspect_npz(path, limits or InspectLimits())
    _check_names(path, header)
    target = _target(model)
    check_labels = LABEL_CHECKS[kind.label_form]

    with np.load(path, allow_pickle=False) as npz:
        x_train = _check_x("x_train", npz["x_train"], target)
        y_train = check_labels("y_train", npz["y_train"], target, loss)
        _pair("x_train", x_train, "y_train", y_train)
        if len(x_train) < 2:
            raise DataError(f"x_train has {len(x_train)} sample; at least 2 are needed")
        if "x_val" in header:
            x_val = _check_x("x_val", npz["x_val"], target)
            y_val = check_labels("y_val", npz["y_val"], target, loss)
            _pair("x_val", x_val, "y_val", y_val)
            split = "given"
        else:
            x_train, y_train, x_val, y_val = _held_out_split(x_train, y_train, validation_fraction, seed)
            split = "held_out"
        x_test = y_test = None
        if "x_test" in header:
            x_test = _check_x("x_test", npz["x_test"], target)
            y_test = check_labels("y_test", npz["y_test"], target, loss)
            _pair("x_test", x_test, "y_test", y_test)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        label_form=kind.label_form,
        num_classes=_num_classes(kind.label_form, target),
        split=split,
        x_test=x_test,
        y_test=y_test,
    )
