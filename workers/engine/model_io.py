"""Load an untrusted Keras model, read the task it was compiled for, and compile it for training.

Public API::

    TrainingSettings(batch_size=128, optimizer="adam", learning_rate=1e-3, loss=None, metrics=None, ...)
    load_model(path, limits=None) -> LoadedModel
    resolve_training(loaded, training: TrainingSettings) -> (loss name, metric names)
    compile_model(model, training: TrainingSettings, loss, metrics, *, from_logits=None) -> model
    output_activation(model) -> str | None
    LOSSES: dict[name, LossKind]        OPTIMIZERS: dict[name, optimizer class]

Loading always inspects the file first (`inspection.inspect_model_file`: allow-listed classes, sizes, HDF5 and zip
metadata), then calls ``keras.saving.load_model(path, compile=False, safe_mode=True)``, choosing the loader from
the *inspected* format, never from the file name. ``compile=False`` means Keras never deserializes the saved
loss, metric or optimizer objects; we read their *names* from the inspected compile config (``.keras``) or
training config (legacy ``.h5``) and accept only the stock names of ``names.ALLOWED_LOSSES`` /
``ALLOWED_METRICS`` (the job spec validates against the same sets). A saved loss we cannot use is recorded in
`CompileInfo.reason`; it only matters when the job does not set ``training.loss``.

Cross-entropy losses are compiled with ``from_logits`` matching the model's output: a linear output (no softmax
or sigmoid) is treated as logits, unless the caller says otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from workers.engine.errors import ModelRejected, SpecError
from workers.engine.inspection import InspectLimits, ModelInspection, inspect_model_file
from workers.engine.names import ALLOWED_LOSSES, ALLOWED_METRICS, INFERENCE_IDENTITY_LAYERS

__all__ = [
    "CompileInfo",
    "LoadedModel",
    "LossKind",
    "LOSSES",
    "OPTIMIZERS",
    "TrainingSettings",
    "compile_model",
    "load_model",
    "output_activation",
    "output_units",
    "resolve_training",
]

# --------------------------------------------------------------------------- registries


@dataclass(frozen=True)
class LossKind:
    """A supported loss: how to build it, which label form it expects and the metrics used when none are given."""

    label_form: str  # "sparse" | "onehot" | "binary" | "regression"
    build: Callable[[bool], Any]  # from_logits -> a Keras loss
    default_metrics: tuple[str, ...]


def _regression(cls) -> Callable[[bool], Any]:
    return lambda _from_logits: cls()


LOSSES: dict[str, LossKind] = {
    "sparse_categorical_crossentropy": LossKind(
        "sparse", lambda fl: keras.losses.SparseCategoricalCrossentropy(from_logits=fl), ("accuracy",)
    ),
    "categorical_crossentropy": LossKind(
        "onehot", lambda fl: keras.losses.CategoricalCrossentropy(from_logits=fl), ("accuracy",)
    ),
    "binary_crossentropy": LossKind(
        "binary", lambda fl: keras.losses.BinaryCrossentropy(from_logits=fl), ("accuracy",)
    ),
    "mse": LossKind("regression", _regression(keras.losses.MeanSquaredError), ("mae",)),
    "mean_squared_error": LossKind("regression", _regression(keras.losses.MeanSquaredError), ("mae",)),
    "mae": LossKind("regression", _regression(keras.losses.MeanAbsoluteError), ("mae",)),
    "mean_absolute_error": LossKind("regression", _regression(keras.losses.MeanAbsoluteError), ("mae",)),
    "huber": LossKind("regression", _regression(keras.losses.Huber), ("mae",)),
}

OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}

# Saved loss / metric classes -> our stock names (Keras serializes `loss=SomeLoss()` by class name).
LOSS_CLASS_NAMES = {
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
    "CategoricalCrossentropy": "categorical_crossentropy",
    "BinaryCrossentropy": "binary_crossentropy",
    "MeanSquaredError": "mean_squared_error",
    "MeanAbsoluteError": "mean_absolute_error",
    "Huber": "huber",
}
# Keras' own spellings of the same functions (e.g. tf_keras writes "huber_loss" as a Huber loss's name).
LOSS_ALIASES = {"huber_loss": "huber"}
# Options of saved loss objects that our stock losses do not reproduce, with their (harmless) defaults.
_LOSS_OPTION_DEFAULTS = {"label_smoothing": 0.0, "axis": -1, "ignore_class": None, "delta": 1.0}
METRIC_ALIASES = {"acc": "accuracy"}

# Layers that only move or drop values: the output's activation is the one of the layer before them.
_PASS_THROUGH = tuple(
    getattr(keras.layers, n)
    for n in (*INFERENCE_IDENTITY_LAYERS, "Reshape", "Flatten", "Permute", "Identity")
    if hasattr(keras.layers, n)
)

# --------------------------------------------------------------------------- settings


def _positive(name: str, value, *, integer: bool = False, below: float | None = None) -> None:
    kinds = (int,) if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds) and value > 0 and (below is None or value < below)
    if not ok:
        bound = f"0 < {name} < {below:g}" if below is not None else f"{name} > 0"
        raise SpecError(
            f"training.{name} must be {'an integer with ' if integer else ''}{bound}, got {value!r}",
            field=f"training.{name}",
        )


@dataclass(frozen=True)
class TrainingSettings:
    """How every training step of a job trains, as plain values (`config.training_settings` builds it from the
    job spec). `loss` / `metrics` None: the saved model's (see `resolve_training`). `validation_fraction`: the
    held-out share taken from x_train when the dataset has no x_val (`data.load_dataset`). BatchNorm statistics
    are re-estimated on `batchnorm_samples` training samples when `batchnorm_reestimation`."""

    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    loss: str | None = None
    metrics: tuple[str, ...] | None = None
    validation_fraction: float = 0.2
    shuffle: bool = True
    batchnorm_reestimation: bool = True
    batchnorm_samples: int = 2048

    def __post_init__(self):
        if self.metrics is not None:
            object.__setattr__(self, "metrics", tuple(self.metrics))
        _positive("batch_size", self.batch_size, integer=True)
        _positive("learning_rate", self.learning_rate)
        _positive("validation_fraction", self.validation_fraction, below=1.0)
        _positive("batchnorm_samples", self.batchnorm_samples, integer=True)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CompileInfo:
    """What the saved compile / training config says about the task, reduced to stock names."""

    loss: str | None  # a name from ALLOWED_LOSSES, or None when the saved loss cannot be used
    metrics: tuple[str, ...]  # saved metrics we can use (names from ALLOWED_METRICS)
    from_logits: bool | None = None  # as saved with a loss object; None when not recorded
    saved_loss: str | None = None  # how the file names its loss (for messages)
    reason: str | None = None  # why `loss` is None although the model was compiled
    dropped_metrics: tuple[str, ...] = ()  # saved metrics we ignore (not stock or not supported)

    @property
    def usable(self) -> bool:
        return self.loss is not None


@dataclass
class LoadedModel:
    model: keras.Model
    format: str  # "keras" | "h5"
    inspection: ModelInspection
    compile: CompileInfo | None  # None: the model was saved without a loss (never compiled)


# --------------------------------------------------------------------------- loading

_SUFFIXES = {"keras": ".keras", "h5": ".h5"}


def load_model(path: str | Path, limits: InspectLimits | None = None) -> LoadedModel:
    """Inspect `path`, then load it with Keras (compile=False, safe_mode=True).

    Raises UnsupportedFile / ModelRejected (from inspection, or when Keras cannot build the model).
    """
    path = Path(path)
    inspection = inspect_model_file(path, limits or InspectLimits())
    suffix = _SUFFIXES[inspection.format]
    with _path_with_suffix(path, suffix) as load_path:
        try:
            model = keras.saving.load_model(load_path, compile=False, safe_mode=True)
        except Exception as e:  # Keras raises ValueError/TypeError/KeyError/OSError... for inconsistent files
            raise ModelRejected(
                f"{path.name}: Keras could not load the model: {type(e).__name__}: {_one_line(e)}"
            ) from None
    if not isinstance(model, keras.Model):
        raise ModelRejected(f"{path.name}: the file holds a {type(model).__name__}, not a Keras model")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ModelRejected(
            f"{path.name}: model '{model.name}' has no defined inputs; save it built, "
            "with keras.Input(shape) as its first layer"
        )
    return LoadedModel(
        model=model,
        format=inspection.format,
        inspection=inspection,
        compile=read_compile_info(inspection.compile_config),
    )


@contextmanager
def _path_with_suffix(path: Path, suffix: str) -> Iterator[Path]:
    """A path ending in `suffix` for Keras' loader: the file itself, or a link (or copy) in a private folder."""
    if path.name.lower().endswith(suffix):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="secateurs-load-")
    try:
        target = Path(folder) / f"model{suffix}"
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")


# --------------------------------------------------------------------------- reading the compile config


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return str(obj.get("class_name") if obj.get("class_name") != "function" else obj.get("config"))
    return str(obj)


def _loss_name(obj: Any) -> tuple[str | None, bool | None, str | None]:
    """(stock name or None, from_logits as saved, reason when unusable) for one saved loss entry."""
    if isinstance(obj, str):
        name = LOSS_ALIASES.get(obj, obj)
        if name in ALLOWED_LOSSES:
            return name, None, None
        return None, None, f"the saved loss '{obj}' is not supported"
    if isinstance(obj, dict):
        class_name = obj.get("class_name")
        config = obj.get("config")
        if class_name == "function" and isinstance(config, str):
            return _loss_name(config)
        if class_name in LOSS_CLASS_NAMES:
            cfg = config if isinstance(config, dict) else {}
            from_logits = cfg.get("from_logits")
            from_logits = from_logits if isinstance(from_logits, bool) else None
            extras = {k: cfg[k] for k, default in _LOSS_OPTION_DEFAULTS.items() if k in cfg and cfg[k] != default}
            if extras:
                return None, from_logits, (f"the saved loss {class_name} uses options we do not reproduce ({extras})")
            return LOSS_CLASS_NAMES[class_name], from_logits, None
        return None, None, f"the saved loss {class_name!r} is not supported"
    return None, None, f"the saved loss ({type(obj).__name__}) is not a single stock loss"


def _metric_name(obj: Any) -> str | None:
    if isinstance(obj, str):
        name = METRIC_ALIASES.get(obj, obj)
        return name if name in ALLOWED_METRICS else None
    if isinstance(obj, dict):
        class_name, config = obj.get("class_name"), obj.get("config")
        if class_name == "function" and isinstance(config, str):
            return _metric_name(config)
        if class_name == "MeanMetricWrapper" and isinstance(config, dict):  # tf_keras: metrics=["accuracy"]
            return _metric_name(config.get("name")) or _metric_name(config.get("fn"))
        if isinstance(class_name, str):
            return _metric_name(_snake(class_name))
    return None


def _flatten_metrics(obj: Any) -> list:
    """Saved metrics may be a list, a list of lists (tf_keras, one list per output) or a dict by output."""
    if obj is None:
        return []
    if isinstance(obj, dict) and "class_name" not in obj:
        return [m for v in obj.values() for m in _flatten_metrics(v)]
    if isinstance(obj, (list, tuple)):
        return [m for v in obj for m in _flatten_metrics(v)]
    return [obj]


def read_compile_info(config: dict | None) -> CompileInfo | None:
    """Reduce a saved compile config (.keras) or training config (.h5) to stock names; None if uncompiled."""
    if not config or config.get("loss") is None:
        return None
    saved = config["loss"]
    if isinstance(saved, (list, dict)) and not (isinstance(saved, dict) and "class_name" in saved):
        loss, from_logits, reason = (
            None,
            None,
            "the model was compiled with one loss per output; multi-output models are not supported",
        )
    else:
        loss, from_logits, reason = _loss_name(saved)
    metrics: list[str] = []
    dropped: list[str] = []
    for entry in _flatten_metrics(config.get("metrics")):
        name = _metric_name(entry)
        if name is None:
            dropped.append(_describe(entry))
        elif name not in metrics:
            metrics.append(name)
    return CompileInfo(
        loss=loss,
        metrics=tuple(metrics),
        from_logits=from_logits,
        saved_loss=_describe(saved),
        reason=reason,
        dropped_metrics=tuple(dropped),
    )


# --------------------------------------------------------------------------- training settings


def resolve_training(loaded: LoadedModel, training: TrainingSettings) -> tuple[str, list[str]]:
    """The loss and metrics to train and evaluate with: the job's when set, else the saved ones.

    Metrics fall back to the loss's defaults (accuracy for classification, mae for regression).
    """
    info = loaded.compile
    allowed = ", ".join(sorted(ALLOWED_LOSSES))
    if training.loss is not None:
        loss = training.loss
    elif info is None:
        raise SpecError(
            f"the model was saved without a loss; set training.loss (one of: {allowed})", field="training.loss"
        )
    elif info.loss is None:
        raise SpecError(f"{info.reason}; set training.loss (one of: {allowed})", field="training.loss")
    else:
        loss = info.loss
    if loss not in LOSSES:
        raise SpecError(f"training.loss '{loss}' is not supported; allowed: {allowed}", field="training.loss")
    if training.metrics is not None:
        metrics = list(training.metrics)
    elif info is not None and info.metrics:
        metrics = list(info.metrics)
    else:
        metrics = list(LOSSES[loss].default_metrics)
    return loss, metrics


def _producer(tensor, depth: int = 0):
    """The layer that computes `tensor`, looking into nested models and back through pass-through layers."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or depth > 64:
        return None
    op = history.operation
    if isinstance(op, keras.Model):
        outputs = list(getattr(op, "outputs", None) or [])
        return _producer(outputs[history.tensor_index], depth + 1) if history.tensor_index < len(outputs) else None
    if isinstance(op, _PASS_THROUGH):
        nodes = getattr(op, "_inbound_nodes", None) or []
        if history.node_index < len(nodes) and len(nodes[history.node_index].input_tensors) == 1:
            return _producer(nodes[history.node_index].input_tensors[0], depth + 1)
        return None
    return op


def output_activation(model: keras.Model) -> str | None:
    """Name of the activation that produces the model's (first) output: 'softmax', 'sigmoid', 'linear', ...

    None when it cannot be told (e.g. the output comes from an Add or a Concatenate).
    """
    try:
        layer = _producer(model.outputs[0])
    except (AttributeError, ValueError, IndexError):
        layer = None
    if layer is None:
        return None
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.ReLU):
        return "relu"
    fn = getattr(layer, "activation", None)
    if fn is None:
        return None
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else None


def output_units(model: keras.Model) -> int | None:
    """Size of the last axis of the model's first output (None when unknown)."""
    dim = model.outputs[0].shape[-1]
    return int(dim) if dim is not None else None


# Optimizer steps per call of the compiled train function: fewer trips through Keras 3's Python loop per step
# (measured in docs/BENCHMARKS.md, part 1: less pruning overhead and a faster job end to end). Batch-level
# callbacks then run once per 8 steps with the step range (begin, end): the pruning callback and the pipeline's
# progress callback use the batch index they are given, masks update at the first execution boundary at or
# after each scheduled step, and cancellation is checked every 8 steps.
STEPS_PER_EXECUTION = 8


def compile_model(
    model: keras.Model,
    training: TrainingSettings,
    loss: str,
    metrics: list[str] | tuple[str, ...],
    *,
    from_logits: bool | None = None,
    steps_per_execution: int = STEPS_PER_EXECUTION,
) -> keras.Model:
    """Compile `model` with a fresh optimizer from the training settings and a stock loss.

    `from_logits` (cross-entropy only) defaults to whether the output is linear (logits) rather than a
    softmax / sigmoid. `steps_per_execution`: see STEPS_PER_EXECUTION (1 runs batch callbacks after every step).
    """
    kind = LOSSES.get(loss)
    if kind is None:
        raise SpecError(
            f"training.loss '{loss}' is not supported; allowed: {', '.join(sorted(LOSSES))}", field="training.loss"
        )
    bad = [m for m in metrics if m not in ALLOWED_METRICS]
    if bad:
        raise SpecError(
            f"training.metrics {bad} are not supported; allowed: {', '.join(sorted(ALLOWED_METRICS))}",
            field="training.metrics",
        )
    optimizer_cls = OPTIMIZERS.get(training.optimizer)
    if optimizer_cls is None:
        raise SpecError(
            f"training.optimizer '{training.optimizer}' is not supported; allowed: {', '.join(sorted(OPTIMIZERS))}",
            field="training.optimizer",
        )
    if from_logits is None:
        from_logits = output_activation(model) == "linear"
    model.compile(
        optimizer=optimizer_cls(learning_rate=training.learning_rate),
        loss=kind.build(from_logits),
        metrics=list(metrics),
        steps_per_execution=steps_per_execution,
    )
    return model
