"""Inspect untrusted model and dataset files before Keras (or numpy's loader) touches them.

Every uploaded file is attacker-controlled. This module reads only *metadata*: zip directories, JSON configs,
HDF5 object headers and .npy headers. It never imports TensorFlow or Keras (it runs in the API process too) and
never deserializes a Keras object, unpickles, follows an HDF5 link or reads tensor data.

What is accepted
----------------
* ``.keras`` (Keras 3 zip): exactly the members ``config.json`` (required), ``model.weights.h5`` (required) and
  ``metadata.json`` (optional). Refused on purpose: ``model.weights.npz`` (a rarely used weights format read
  through a second, nested zip parser) and ``assets/`` (only lookup/vectorization layers write them, and Keras
  extracts them to disk): one weights parser, HDF5, which is inspected below. Members must be plainly named,
  unique, unencrypted, stored or deflated, within the size, total-size and compression-ratio limits.
* ``.h5`` (legacy Keras HDF5, written by Keras 3 or tf_keras 2.x): the ``model_config`` and ``training_config``
  attributes plus every object in the file.
* The model config (and the compile / training config) is parsed under a size and nesting-depth limit and walked
  completely. Every dict that carries ``class_name``, ``module`` or ``registered_name`` is a serialized object and
  must be a stock Keras class from the allow-list, under one of its stock modules, with no registered name other
  than its own; serialized functions may only name stock losses, metrics and activations; ``__lambda__`` and
  other special objects that execute or import anything are refused; activation strings must be stock names; no
  string anywhere may look like a file path or URL (file-backed layer state).
* HDF5 (`workers.engine.inspection.hdf5`): the signature is checked; the file is opened read-only with locking
  off and the default driver; every link is examined without being followed: only hard links, each object reached
  once (no soft, external or user-defined links, no link cycles or aliases: Keras writes none); datasets must be
  stored in the file (no external raw storage, no virtual datasets), numeric, with known filters, and within the
  element limits; all judged from object headers before any data is read.
* Every JSON document is scanned in time linear in its length (`workers.engine.inspection.jsontext`).
* Load cost: Keras rebuilds a Sequential model after every layer it adds while loading it, so its load time grows
  with the square of its layer count; `ModelInspection.sequential_layers` counts the layers of all Sequential
  models in the config so that a caller can bound it before loading (the service: limits.max_sequential_layers).
* ``inspect_npz``: a dataset archive of plain ``NAME.npy`` members whose headers declare a numeric dtype and a
  shape within the limits, and whose sizes match those headers exactly (so no pickle can hide in them).

Anything else (SavedModel directories, pickles, TFLite, ...) raises ``UnsupportedFile`` naming what was seen.

Callers: load a file that passed according to ``ModelInspection.format`` (give it that extension), never by the
uploaded name. h5py parses attacker bytes in C; where possible run inspection in the sandboxed worker too.
"""

from __future__ import annotations

import io
import math
import re
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.engine.errors import DataError, EngineError, ModelRejected, UnsupportedFile
from workers.engine.inspection.hdf5 import check_h5, h5_file, malformed, plain_numeric, read_h5_text_attr
from workers.engine.inspection.jsontext import json_depth, parse_json

__all__ = ["InspectLimits", "ModelInspection", "inspect_model_file", "inspect_npz"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
EMPTY_ZIP_SIGNATURE = b"PK\x05\x06"

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
KERAS_MEMBERS = frozenset({CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER})
REFUSED_MEMBER_REASONS = {
    "model.weights.npz": "the npz weights format is not accepted; save with the default .h5 weights",
    "assets": "asset files are not accepted (they hold file-backed layer state such as vocabularies)",
}

# A member that expands past this many bytes is judged by its compression ratio.
RATIO_FLOOR_BYTES = 1 << 20
# Central directory records are at least 46 bytes; this bounds what zipfile will parse.
MAX_CENTRAL_DIRECTORY_BYTES = 4 << 20
MAX_METADATA_BYTES = 64 << 10


@dataclass(frozen=True)
class InspectLimits:
    """Bounds on what an uploaded file may declare. All are checked from metadata before any data is read."""

    max_file_bytes: int = 512 * 2**20
    max_members: int = 64  # zip members (a .keras file has 3; datasets may hold more arrays)
    max_member_bytes: int = 512 * 2**20  # uncompressed size of one zip member
    max_total_bytes: int = 576 * 2**20  # uncompressed total, and the declared bytes of all HDF5 datasets
    max_compression_ratio: float = 100.0  # for members over 1 MiB; Keras stores members uncompressed
    max_config_bytes: int = 16 * 2**20  # config.json / model_config / training_config
    max_json_depth: int = 100  # nesting of [ and { in any JSON document
    max_layers: int = 5_000  # layer objects in the config, nested models included
    max_params: int = 200_000_000  # declared model weights (elements)
    max_tensor_elements: int = 2**28  # elements of one HDF5 dataset or .npy array
    max_h5_objects: int = 100_000  # links walked in one HDF5 file

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"InspectLimits.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class ModelInspection:
    """What inspection learned about a model file that passed every check."""

    format: str  # "keras" (Keras 3 zip) or "h5" (legacy HDF5)
    model_config: dict  # the parsed model config (top-level serialized model object)
    compile_config: dict | None  # .keras: config.json's compile_config; .h5: the parsed training_config
    layer_count: int  # layers that compute: leaf layers of all (nested) models, InputLayer not counted
    weight_count: int  # declared model weight elements (optimizer state not counted)
    keras_version: str | None
    class_names: frozenset[str] = field(default_factory=frozenset)  # every class named in the configs
    # entries of the `layers` lists of every Sequential model in the config (nested ones included): Keras rebuilds
    # a Sequential model after each layer it adds while loading it, so its load time grows with this number squared
    sequential_layers: int = 0


# --------------------------------------------------------------------------------------------------------------
# The allow-list of stock Keras objects
# --------------------------------------------------------------------------------------------------------------

LAYER_MODULES = (None, "keras.layers")
LAYER_CLASSES = """
    InputLayer Dense EinsumDense Embedding
    Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose
    Convolution1D Convolution2D Convolution3D Convolution1DTranspose Convolution2DTranspose Convolution3DTranspose
    DepthwiseConv1D DepthwiseConv2D SeparableConv1D SeparableConv2D SeparableConvolution1D SeparableConvolution2D
    BatchNormalization LayerNormalization GroupNormalization UnitNormalization
    Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianDropout GaussianNoise AlphaDropout
    ActivityRegularization Masking Identity
    Flatten Reshape Permute RepeatVector
    MaxPooling1D MaxPooling2D MaxPooling3D MaxPool1D MaxPool2D MaxPool3D
    AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
    GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D
    GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
    GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
    ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D
    UpSampling1D UpSampling2D UpSampling3D
    Activation ReLU LeakyReLU PReLU ELU Softmax
    Add Subtract Multiply Average Maximum Minimum Concatenate Dot
    Rescaling Normalization Resizing CenterCrop
    StringLookup IntegerLookup TextVectorization Hashing
    SimpleRNN LSTM GRU MultiHeadAttention Attention AdditiveAttention
""".split()
CONTAINER_MODULES = {
    "Functional": (None, "keras", "keras.models", "keras.src.models.functional", "keras.src.engine.functional"),
    "Sequential": (None, "keras", "keras.models", "keras.src.models.sequential", "keras.src.engine.sequential"),
    "Model": (None, "keras", "keras.models", "keras.src.models.model", "keras.src.engine.training"),
}
INITIALIZER_CLASSES = """
    Constant Zeros Ones Identity IdentityInitializer Orthogonal OrthogonalInitializer
    GlorotNormal GlorotUniform HeNormal HeUniform LecunNormal LecunUniform
    RandomNormal RandomUniform TruncatedNormal VarianceScaling
""".split()
REGULARIZER_CLASSES = "L1 L2 L1L2 OrthogonalRegularizer".split()
CONSTRAINT_CLASSES = "MaxNorm MinMaxNorm NonNeg UnitNorm".split()
OPTIMIZER_CLASSES = """
    SGD Adam AdamW RMSprop Adagrad Adadelta Adamax Nadam Ftrl Lion Adafactor Lamb LossScaleOptimizer
""".split()
SCHEDULE_CLASSES = """
    ExponentialDecay PiecewiseConstantDecay PolynomialDecay InverseTimeDecay CosineDecay CosineDecayRestarts
""".split()
LOSS_CLASSES = """
    BinaryCrossentropy BinaryFocalCrossentropy CategoricalCrossentropy CategoricalFocalCrossentropy
    SparseCategoricalCrossentropy MeanSquaredError MeanAbsoluteError MeanAbsolutePercentageError
    MeanSquaredLogarithmicError Huber LogCosh KLDivergence Poisson Hinge SquaredHinge CategoricalHinge
    CosineSimilarity
""".split()
METRIC_CLASSES = """
    Accuracy BinaryAccuracy CategoricalAccuracy SparseCategoricalAccuracy TopKCategoricalAccuracy
    SparseTopKCategoricalAccuracy AUC Precision Recall Mean F1Score FBetaScore R2Score IoU MeanIoU
    TruePositives TrueNegatives FalsePositives FalseNegatives
    PrecisionAtRecall RecallAtPrecision SensitivityAtSpecificity SpecificityAtSensitivity
    MeanSquaredError MeanAbsoluteError RootMeanSquaredError MeanAbsolutePercentageError
    MeanSquaredLogarithmicError BinaryCrossentropy CategoricalCrossentropy SparseCategoricalCrossentropy
    KLDivergence Poisson Hinge SquaredHinge CategoricalHinge CosineSimilarity LogCoshError MeanMetricWrapper
""".split()
DTYPE_POLICY_MODULES = {
    "DTypePolicy": (None, "keras", "keras.dtype_policies"),
    "FloatDTypePolicy": (None, "keras", "keras.dtype_policies"),
    "Policy": (None, "keras.mixed_precision"),
}


def _build_allow_list() -> dict[str, dict[str | None, str]]:
    """class_name -> {allowed module -> category}. Earlier entries win for module None (no module key)."""
    table: dict[str, dict[str | None, str]] = {}

    def add(classes, modules, category):
        for name in classes:
            for module in modules:
                table.setdefault(name, {}).setdefault(module, category)

    add(LAYER_CLASSES, LAYER_MODULES, "layer")
    for name, modules in CONTAINER_MODULES.items():
        add([name], modules, "model")
    add(INITIALIZER_CLASSES, (None, "keras.initializers"), "initializer")
    add(REGULARIZER_CLASSES, (None, "keras.regularizers"), "regularizer")
    add(CONSTRAINT_CLASSES, (None, "keras.constraints"), "constraint")
    add(OPTIMIZER_CLASSES, (None, "keras.optimizers"), "optimizer")
    add([f"Custom>{c}" for c in OPTIMIZER_CLASSES], (None, "keras.optimizers"), "optimizer")  # tf_keras 2.11+
    add(SCHEDULE_CLASSES, (None, "keras.optimizers.schedules"), "schedule")
    add(LOSS_CLASSES, (None, "keras.losses"), "loss")
    add(METRIC_CLASSES, (None, "keras.metrics"), "metric")
    for name, modules in DTYPE_POLICY_MODULES.items():
        add([name], modules, "dtype_policy")
    return table


ALLOWED_CLASSES = _build_allow_list()

ACTIVATION_NAMES = frozenset("""
    linear relu relu6 leaky_relu elu selu celu gelu silu swish mish sigmoid hard_sigmoid log_sigmoid
    softmax log_softmax softplus softsign tanh hard_tanh tanh_shrink exponential hard_silu hard_swish glu
    sparse_plus squareplus soft_shrink hard_shrink sparsemax sparse_sigmoid threshold
""".split())
LOSS_FUNCTION_NAMES = frozenset("""
    sparse_categorical_crossentropy categorical_crossentropy binary_crossentropy binary_focal_crossentropy
    categorical_focal_crossentropy mean_squared_error mean_absolute_error mean_absolute_percentage_error
    mean_squared_logarithmic_error mse mae mape msle huber log_cosh logcosh kl_divergence kld
    kullback_leibler_divergence poisson hinge squared_hinge categorical_hinge cosine_similarity
""".split())
METRIC_FUNCTION_NAMES = frozenset("""
    accuracy acc binary_accuracy categorical_accuracy sparse_categorical_accuracy
    top_k_categorical_accuracy sparse_top_k_categorical_accuracy crossentropy ce bce
""".split())
STOCK_FUNCTION_NAMES = ACTIVATION_NAMES | LOSS_FUNCTION_NAMES | METRIC_FUNCTION_NAMES
# What Keras writes for a stock function: {"module": "builtins", "class_name": "function", "config": NAME, ...}.
FUNCTION_MODULES = frozenset({"builtins", "keras.activations", "keras.losses", "keras.metrics"})
OPTIMIZER_NAMES = frozenset(c.lower() for c in OPTIMIZER_CLASSES if c != "LossScaleOptimizer")
# Strings the compile / training config may name (resolved by Keras inside its losses/metrics/optimizers).
COMPILE_NAMES = {
    "loss": LOSS_FUNCTION_NAMES | {c.lower() for c in LOSS_CLASSES} | set(LOSS_CLASSES),
    "metrics": STOCK_FUNCTION_NAMES | {c.lower() for c in METRIC_CLASSES} | set(METRIC_CLASSES),
    "optimizer": OPTIMIZER_NAMES | set(OPTIMIZER_CLASSES),
}
COMPILE_NAMES["weighted_metrics"] = COMPILE_NAMES["metrics"]

# Special objects of the Keras 3 serializer that only carry data.
DATA_OBJECTS = frozenset({"__keras_tensor__", "__numpy__", "__tensor__", "__ellipsis__", "__slice__"})
NUMERIC_DTYPE_NAMES = frozenset("""
    bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 bfloat16 float32 float64
""".split())

# Classes refused with a reason of their own (anything else off the allow-list is "not a stock Keras class").
REFUSED_CLASS_REASONS = {
    "Lambda": "Lambda layers carry Python code",
    "TFOpLambda": "TFOpLambda layers call TensorFlow functions named in the file",
    "SlicingOpLambda": "SlicingOpLambda layers call TensorFlow functions named in the file",
    "TFSMLayer": "TFSMLayer loads a TensorFlow SavedModel from a path",
    "TorchModuleWrapper": "TorchModuleWrapper carries a pickled PyTorch module",
    "JaxLayer": "JaxLayer wraps arbitrary JAX functions",
    "FlaxLayer": "FlaxLayer wraps arbitrary Flax modules",
    "__lambda__": "a serialized Python lambda carries Python code",
    "__typespec__": "TypeSpec objects resolve classes named in the file",
    "__bytes__": "raw byte objects have no place in a model config",
}

_PATH_LIKE = re.compile(r"^(?:/|~|\\\\|[A-Za-z]:[\\/])|://|(?:^|[\\/])\.\.(?:[\\/]|$)|^file:", re.IGNORECASE)


# "package>Name": how register_keras_serializable names custom objects; Keras resolves such strings anywhere.
_REGISTERED_NAME = re.compile(r"^[\w.\-]+>[\w.\-]+$")


def _is_path_like(text: str) -> bool:
    return bool(_PATH_LIKE.search(text))


# --------------------------------------------------------------------------------------------------------------
# The config walker
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _ConfigWalk:
    """Walks one parsed config document, refusing anything off the allow-list; counts what it saw."""

    source: str  # e.g. "config.json" or "model_config attribute": named in every message
    limits: InspectLimits
    layer_objects: int = 0
    compute_layers: int = 0
    declared_params: int = 0  # largest weights of Dense/Conv/Embedding layers, estimated from their configs
    sequential_layers: int = 0  # entries of the layers lists of all Sequential models
    class_names: set[str] = field(default_factory=set)

    def fail(self, where: str, message: str) -> None:
        raise ModelRejected(f"{self.source}: {where}{message}")

    # -- generic tree -------------------------------------------------------------------------------------------
    def visit(self, node: Any, path: str, ctx: str, compile_key: str | None = None) -> None:
        if isinstance(node, dict):
            if any(k in node for k in ("class_name", "module", "registered_name")):
                self.visit_object(node, path, ctx, compile_key)
                return
            for key, value in node.items():
                self.visit_key(key, value, path, ctx, compile_key)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                self.visit(item, f"{path}[{i}]", ctx, compile_key)
        elif isinstance(node, str):
            self.check_string(node, path, ctx, compile_key)

    def visit_key(self, key: Any, value: Any, path: str, ctx: str, compile_key: str | None) -> None:
        if not isinstance(key, str):
            self.fail(ctx, f"non-string key at {path}")
        child = f"{path}.{key}" if path else key
        check = KEY_CHECKS.get(key)
        if check is not None:
            check(self, value, child, ctx)
        if compile_key == "" and key in COMPILE_NAMES:
            compile_key = key  # at the top of a compile config: the strings below name losses/metrics/...
        elif key == "compile_config":
            compile_key = ""  # Keras compiles any nested model that carries one
        self.visit(value, child, ctx, compile_key)

    def check_string(self, text: str, path: str, ctx: str, compile_key: str | None) -> None:
        if _REGISTERED_NAME.match(text):
            self.fail(ctx, f"value {text[:80]!r} at {path} names a registered custom object; only stock Keras "
                           "objects are accepted")
        if _is_path_like(text):
            self.fail(ctx, f"value {text[:80]!r} at {path} looks like a file path or URL; "
                           "file-backed state and downloads are not accepted")
        if compile_key is not None and compile_key in COMPILE_NAMES and text not in COMPILE_NAMES[compile_key]:
            self.fail(ctx, f"{compile_key} {text[:80]!r} at {path} is not a stock Keras {compile_key} name")

    # -- serialized objects -------------------------------------------------------------------------------------
    def visit_object(self, node: dict, path: str, ctx: str, compile_key: str | None) -> None:
        class_name = node.get("class_name")
        module = node.get("module")
        registered = node.get("registered_name")
        where = f" at {path or 'the top level'}"
        if not isinstance(class_name, str) or not class_name:
            self.fail(ctx, f"serialized object{where} has no class_name")
        if module is not None and not isinstance(module, str):
            self.fail(ctx, f"object '{class_name}'{where} has a non-string module")
        config = node.get("config")

        if class_name in DATA_OBJECTS:
            self.check_data_object(node, class_name, module, path, ctx)
        elif class_name == "function":
            self.check_function(node, module, registered, path, ctx)
            return
        elif class_name in REFUSED_CLASS_REASONS or class_name not in ALLOWED_CLASSES:
            self.refuse_class(node, class_name, module, path, ctx)
        else:
            category = self.check_stock_class(class_name, module, registered, config, path, ctx)
            self.class_names.add(class_name)
            if category in ("layer", "model"):
                ctx = self.enter_layer(class_name, category, config, node.get("build_config"), path)
            elif compile_key is not None:
                compile_key = None  # inside a loss/metric/optimizer object: its fields are not names
        for key, value in node.items():
            if key not in ("class_name", "module", "registered_name"):
                self.visit_key(key, value, path, ctx, compile_key)

    def refuse_class(self, node: dict, class_name: str, module: Any, path: str, ctx: str) -> None:
        reason = REFUSED_CLASS_REASONS.get(class_name, "not a stock Keras class on the allow-list")
        name = _layer_name(node)
        if name is not None:
            self.fail("", f"layer {name!r} ({class_name}) is not allowed: {reason} (at {path or 'the top level'})")
        shown = f"{module}.{class_name}" if module else class_name
        self.fail(ctx, f"object {shown!r} at {path or 'the top level'} is not allowed: {reason}")

    def check_stock_class(self, class_name, module, registered, config, path, ctx) -> str:
        modules = ALLOWED_CLASSES[class_name]
        where = f" at {path or 'the top level'}"
        if module not in modules:
            allowed = ", ".join(repr(m) for m in modules if m)
            self.fail(ctx, f"class '{class_name}'{where} names module {module!r}; only the stock Keras "
                           f"module(s) {allowed} are allowed")
        if registered is not None and registered != class_name:
            self.fail(ctx, f"class '{class_name}'{where} has registered_name {registered!r}, "
                           f"which is not the stock one")
        if not isinstance(config, dict):
            self.fail(ctx, f"class '{class_name}'{where} has a config that is not an object")
        return modules[module]

    def enter_layer(self, class_name: str, category: str, config: dict, build_config: Any, path: str) -> str:
        name = config.get("name")
        ctx = f"{'model' if category == 'model' else 'layer'} {name!r} ({class_name}): "
        self.layer_objects += 1
        if self.layer_objects > self.limits.max_layers:
            self.fail("", f"more than {self.limits.max_layers} layers (limit max_layers)")
        if category == "layer" and class_name != "InputLayer":
            self.compute_layers += 1
        if category == "model" and class_name != "Model" and not isinstance(config.get("layers"), list):
            self.fail(ctx, f"model at {path or 'the top level'} has no 'layers' list")
        if class_name == "Sequential":
            self.sequential_layers += len(config["layers"])
        if class_name == "Model" and not {"layers", "input_layers", "output_layers"} <= config.keys():
            self.fail(ctx, "only functional Model configs (layers, input_layers, output_layers) are accepted")
        check = CLASS_CHECKS.get(class_name)
        if check is not None:
            check(self, config, ctx)
        if category == "layer":
            self.check_declared_sizes(class_name, config, build_config, ctx)
        return ctx

    def check_declared_sizes(self, class_name: str, config: dict, build_config: Any, ctx: str) -> None:
        """Keras builds variables from the config before reading any weights: bound what the config declares."""
        limit = self.limits.max_tensor_elements
        for key in SIZE_FIELDS:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= limit:
                self.fail(ctx, f"{key}={value} is out of range (0..{limit}, max_tensor_elements)")
        estimate = PARAM_ESTIMATES.get(class_name)
        if estimate is None:
            return
        shape = build_config.get("input_shape") if isinstance(build_config, dict) else None
        try:
            declared = estimate(config, shape)
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            declared = 0  # an odd config: Keras will refuse it; the weights-file checks still apply
        if declared > limit:
            self.fail(ctx, f"the config declares a {declared}-element weight; the limit is {limit} "
                           "(max_tensor_elements)")
        self.declared_params += declared
        if self.declared_params > self.limits.max_params:
            self.fail(ctx, f"the config declares more than {self.limits.max_params} weights (max_params)")

    def check_data_object(self, node: dict, class_name: str, module: Any, path: str, ctx: str) -> None:
        if module is not None:
            self.fail(ctx, f"'{class_name}' at {path} names module {module!r}")
        config = node.get("config")
        if class_name in ("__numpy__", "__tensor__"):
            dtype = config.get("dtype") if isinstance(config, dict) else None
            if dtype not in NUMERIC_DTYPE_NAMES:
                self.fail(ctx, f"'{class_name}' at {path} has dtype {dtype!r}; only numeric dtypes are allowed")

    def check_function(self, node: dict, module: Any, registered: Any, path: str, ctx: str) -> None:
        name = node.get("config")
        shown = f"{module}.{name}" if module else str(name)
        where = f" at {path or 'the top level'}"
        if not isinstance(name, str) or module not in FUNCTION_MODULES or name not in STOCK_FUNCTION_NAMES:
            self.fail(ctx, f"serialized function {shown!r}{where} is not allowed: only stock Keras losses, "
                           "metrics and activations may be referenced by a model file")
        if registered not in (None, "function", name):
            self.fail(ctx, f"serialized function {shown!r}{where} has registered_name {registered!r}, "
                           "which is not the stock one")
        extra = set(node) - {"module", "class_name", "config", "registered_name"}
        if extra:
            self.fail(ctx, f"serialized function {shown!r}{where} carries unexpected fields {sorted(extra)}")


def _layer_name(node: dict) -> str | None:
    """The name of something that looks like a layer entry (has a named config), else None."""
    config = node.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    if name is None:
        name = node.get("name")
    return name if isinstance(name, str) else None


# -- checks keyed by config field ------------------------------------------------------------------------------
def _check_activation(walk: _ConfigWalk, value: Any, path: str, ctx: str) -> None:
    if isinstance(value, str) and value not in ACTIVATION_NAMES:
        walk.fail(ctx, f"activation {value[:80]!r} at {path} is not a stock Keras activation name")


def _check_metric_fn(walk: _ConfigWalk, value: Any, path: str, ctx: str) -> None:
    if isinstance(value, str) and value not in STOCK_FUNCTION_NAMES:
        walk.fail(ctx, f"function name {value[:80]!r} at {path} is not a stock Keras loss or metric")
    if not isinstance(value, (str, dict)):
        walk.fail(ctx, f"'fn' at {path} must name a stock Keras loss or metric")


KEY_CHECKS: dict[str, Callable[[_ConfigWalk, Any, str, str], None]] = {
    "activation": _check_activation,
    "recurrent_activation": _check_activation,
    "fn": _check_metric_fn,
}


# -- checks keyed by layer class (file-backed state) -----------------------------------------------------------
def _inline_only(*fields: str, what: str) -> Callable[[_ConfigWalk, dict, str], None]:
    def check(walk: _ConfigWalk, config: dict, ctx: str) -> None:
        for name in fields:
            value = config.get(name)
            if value is not None and not isinstance(value, (list, int, float)):
                walk.fail(ctx, f"'{name}' must be inline {what}, not {type(value).__name__} "
                               f"({str(value)[:80]!r}): {what} files are not accepted")

    return check


CLASS_CHECKS: dict[str, Callable[[_ConfigWalk, dict, str], None]] = {
    "StringLookup": _inline_only("vocabulary", "idf_weights", what="vocabulary"),
    "IntegerLookup": _inline_only("vocabulary", "idf_weights", what="vocabulary"),
    "TextVectorization": _inline_only("vocabulary", "idf_weights", what="vocabulary"),
    "Hashing": _inline_only("salt", what="salt"),
    "Normalization": _inline_only("mean", "variance", what="statistics"),
}


# -- sizes the config declares (Keras allocates them while building the model, before loading weights) ------------
SIZE_FIELDS = ("units", "filters", "input_dim", "output_dim", "depth_multiplier", "n", "max_tokens", "num_bins",
               "output_sequence_length", "height", "width")


def _dims(value: Any) -> int:
    """Product of an int or a list of ints (a kernel size); anything else counts as 1."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, (list, tuple)):
        return math.prod(_dims(v) for v in value)
    return 1


def _channels(config: dict, shape: Any) -> int:
    """Input channels from a build input shape (channels_last unless the config says channels_first)."""
    if not isinstance(shape, list) or not shape:
        return 1
    axis = 1 if config.get("data_format") == "channels_first" and len(shape) > 1 else -1
    return _dims(shape[axis]) if isinstance(shape[axis], int) else 1


def _conv_params(config: dict, shape: Any) -> int:
    return _dims(config.get("kernel_size")) * _channels(config, shape) * _dims(config.get("filters"))


def _separable_params(config: dict, shape: Any) -> int:
    inner = _channels(config, shape) * _dims(config.get("depth_multiplier"))
    return max(_dims(config.get("kernel_size")) * inner, inner * _dims(config.get("filters")))


PARAM_ESTIMATES: dict[str, Callable[[dict, Any], int]] = {
    "Dense": lambda c, s: _channels({}, s) * _dims(c.get("units")),
    "Embedding": lambda c, s: _dims(c.get("input_dim")) * _dims(c.get("output_dim")),
    "DepthwiseConv1D": lambda c, s: _dims(c.get("kernel_size")) * _channels(c, s) * _dims(c.get("depth_multiplier")),
    "DepthwiseConv2D": lambda c, s: _dims(c.get("kernel_size")) * _channels(c, s) * _dims(c.get("depth_multiplier")),
    **{name: _separable_params for name in ("SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D",
                                            "SeparableConvolution2D")},
    **{f"{stem}{d}D{suffix}": _conv_params
       for stem in ("Conv", "Convolution") for d in (1, 2, 3) for suffix in ("", "Transpose")},
}


def _walk_model_config(config: Any, source: str, limits: InspectLimits) -> _ConfigWalk:
    """Walk a whole model config (compile_config included); the top-level object must be a Keras model."""
    walk = _ConfigWalk(source=source, limits=limits)
    if not isinstance(config, dict):
        raise ModelRejected(f"{source}: the model config must be a JSON object, got {type(config).__name__}")
    walk.visit({k: v for k, v in config.items() if k != "compile_config"}, "", "")
    class_name = config.get("class_name")
    if class_name not in CONTAINER_MODULES:
        raise ModelRejected(f"{source}: the top-level object is {class_name!r}; expected a Keras model "
                            f"({', '.join(CONTAINER_MODULES)})")
    if config.get("compile_config") is not None:
        walk_compile_config(walk, config["compile_config"], "compile_config")
    return walk


def walk_compile_config(walk: _ConfigWalk, config: Any, path: str) -> None:
    if not isinstance(config, dict):
        walk.fail("", f"{path} must be a JSON object")
    walk.visit(config, path, f"{path}: ", compile_key="")


# --------------------------------------------------------------------------------------------------------------
# JSON under limits (workers.engine.inspection.jsontext: linear-time depth scan)
# --------------------------------------------------------------------------------------------------------------

_json_depth = json_depth


def _parse_json(raw: bytes | str, source: str, limits: InspectLimits, max_bytes: int | None = None,
                error: type[EngineError] = ModelRejected) -> Any:
    return parse_json(raw, source, max_bytes=limits.max_config_bytes if max_bytes is None else max_bytes,
                      max_depth=limits.max_json_depth, error=error)


# --------------------------------------------------------------------------------------------------------------
# Zip archives
# --------------------------------------------------------------------------------------------------------------

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


def _central_directory_size(path: Path, size: int, error: type[EngineError]) -> tuple[int, int]:
    """(entries, central directory bytes) read from the end records, before zipfile parses anything."""
    with open(path, "rb") as f:
        tail_len = min(size, _EOCD.size + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(EMPTY_ZIP_SIGNATURE)
        if at < 0 or at + _EOCD.size > len(tail):
            raise error(f"{path.name}: damaged zip archive (no end-of-central-directory record)")
        _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
            loc_at = size - tail_len + at - _ZIP64_LOCATOR.size
            if loc_at < 0:
                raise error(f"{path.name}: damaged zip64 archive")
            f.seek(loc_at)
            sig, _, eocd64_at, _ = _ZIP64_LOCATOR.unpack(f.read(_ZIP64_LOCATOR.size))
            if sig != b"PK\x06\x07" or eocd64_at + _ZIP64_EOCD.size > size:
                raise error(f"{path.name}: damaged zip64 archive")
            f.seek(eocd64_at)
            record = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
            if record[0] != b"PK\x06\x06":
                raise error(f"{path.name}: damaged zip64 archive")
            entries, cd_size = record[7], record[8]
    return entries, cd_size


def _unsafe_member_name(name: str) -> str | None:
    """Why a member name is unsafe, or None."""
    if not name:
        return "an empty name"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "control characters"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "a '..' component"
    if "\\" in name:
        return "a backslash"
    return None


def _open_zip(path: Path, limits: InspectLimits, error: type[EngineError], what: str
              ) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a zip archive after checking its directory: names, count, sizes, ratios, encryption, duplicates."""
    size = path.stat().st_size
    entries, cd_size = _central_directory_size(path, size, error)
    if entries > limits.max_members:
        raise error(f"{path.name}: {what} has {entries} members; the limit is {limits.max_members} (max_members)")
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise error(f"{path.name}: {what} has a {cd_size}-byte central directory; the limit is "
                    f"{MAX_CENTRAL_DIRECTORY_BYTES}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
        raise error(f"{path.name}: damaged zip archive: {e}") from None
    try:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise error(f"{path.name}: {what} has {len(infos)} members; the limit is {limits.max_members} "
                        "(max_members)")
        seen: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            why = _unsafe_member_name(name)
            if why is not None:
                raise error(f"{path.name}: member {name!r} has an unsafe path ({why})")
            if name in seen or name.lower() in seen:
                raise error(f"{path.name}: member {name!r} appears more than once")
            seen.update((name, name.lower()))
            if info.flag_bits & 0x1:
                raise error(f"{path.name}: member {name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise error(f"{path.name}: member {name!r} uses compression method {info.compress_type}; "
                            "only stored and deflated members are accepted")
            if info.file_size > limits.max_member_bytes:
                raise error(f"{path.name}: member {name!r} expands to {info.file_size} bytes; the limit is "
                            f"{limits.max_member_bytes} (max_member_bytes)")
            if info.file_size > RATIO_FLOOR_BYTES and (
                    info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)):
                ratio = info.file_size / max(info.compress_size, 1)
                raise error(f"{path.name}: member {name!r} has compression ratio {ratio:.0f}:1 "
                            f"({info.compress_size} -> {info.file_size} bytes); the limit is "
                            f"{limits.max_compression_ratio:g}:1 (max_compression_ratio): a zip bomb?")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise error(f"{path.name}: {what} expands to more than {limits.max_total_bytes} bytes "
                            "(max_total_bytes)")
    except BaseException:
        zf.close()
        raise
    return zf, infos


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, limit_name: str,
                 error: type[EngineError]) -> bytes:
    """Read one member, never more than `limit` bytes (whatever its directory entry claims)."""
    if info.file_size > limit:
        raise error(f"member {info.filename!r} is {info.file_size} bytes; the limit is {limit} ({limit_name})")
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise error(f"member {info.filename!r} is damaged: {e}") from None
    if len(data) > limit:
        raise error(f"member {info.filename!r} is larger than {limit} bytes ({limit_name})")
    return data


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start+length) of an open file (a stored zip member)."""

    def __init__(self, f, start: int, length: int):
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextmanager
def _member_file(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: InspectLimits
                 ) -> Iterator[io.IOBase]:
    """A seekable file object over one member: a window into the archive if stored, a temp copy if deflated."""
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size:
                raise ModelRejected(f"{path.name}: member {info.filename!r} is damaged (truncated header)")
            fields = _LOCAL_HEADER.unpack(header)
            if fields[0] != ZIP_SIGNATURE:
                raise ModelRejected(f"{path.name}: member {info.filename!r} is damaged (bad local header)")
            name_len, extra_len = fields[-2], fields[-1]
            local_name = f.read(name_len)
            if local_name.decode("utf-8", "replace") != info.filename and \
                    local_name.decode("cp437", "replace") != info.filename:
                raise ModelRejected(f"{path.name}: member {info.filename!r} has a different name in its local "
                                    "header")
            start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            if start + info.file_size > path.stat().st_size:
                raise ModelRejected(f"{path.name}: member {info.filename!r} runs past the end of the file")
            yield _Window(f, start, info.file_size)
        return
    with tempfile.TemporaryFile() as tmp, zf.open(info) as src:
        copied = 0
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > limits.max_member_bytes:
                raise ModelRejected(f"{path.name}: member {info.filename!r} is larger than "
                                    f"{limits.max_member_bytes} bytes (max_member_bytes)")
            tmp.write(chunk)
        tmp.seek(0)
        yield tmp


# --------------------------------------------------------------------------------------------------------------
# HDF5 (workers.engine.inspection.hdf5)
# --------------------------------------------------------------------------------------------------------------

_plain_numeric, _malformed, _h5_file, _check_h5 = plain_numeric, malformed, h5_file, check_h5
_read_h5_text_attr = read_h5_text_attr


# --------------------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------------------

_SIGNATURES: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda h: h[:1] == b"\x80" and h[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"), "a Python pickle"),
    (lambda h: h[4:8] == b"TFL3", "a TensorFlow Lite flatbuffer"),
    (lambda h: h.startswith(b"\x93NUMPY"), "a NumPy .npy array"),
    (lambda h: h.startswith(b"GGUF"), "a GGUF model"),
    (lambda h: h.startswith(b"\x1f\x8b"), "gzip-compressed data"),
    (lambda h: h[257:262] == b"ustar", "a tar archive"),
    (lambda h: h.lstrip()[:1] in (b"{", b"["), "a JSON document (a config without weights?)"),
    (lambda h: len(h) >= 9 and h[8:9] == b"{" and int.from_bytes(h[:8], "little") < 1 << 30,
     "a safetensors file"),
)


def _describe(head: bytes) -> str:
    for matches, description in _SIGNATURES:
        if matches(head):
            return description
    return f"an unrecognised file (first bytes {head[:8].hex(' ')})"


def _sniff(path: Path, limits: InspectLimits, error: type[EngineError]) -> bytes:
    if path.is_dir():
        saved_model = " (a TensorFlow SavedModel?)" if (path / "saved_model.pb").exists() else ""
        raise UnsupportedFile(f"{path.name} is a directory{saved_model}; upload a .keras or .h5 file")
    if not path.is_file():
        raise UnsupportedFile(f"{path.name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise UnsupportedFile(f"{path.name} is empty")
    if size > limits.max_file_bytes:
        raise error(f"{path.name} is {size} bytes; the limit is {limits.max_file_bytes} (max_file_bytes)")
    with open(path, "rb") as f:
        return f.read(512)


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def inspect_model_file(path: str | Path, limits: InspectLimits = InspectLimits()) -> ModelInspection:
    """Check an uploaded model file without deserializing anything; raise ModelRejected / UnsupportedFile.

    Load the file afterwards according to `ModelInspection.format`, never by its name.
    """
    path = Path(path)
    head = _sniff(path, limits, ModelRejected)
    if head.startswith(ZIP_SIGNATURE) or head.startswith(EMPTY_ZIP_SIGNATURE):
        return _inspect_keras(path, limits)
    if head.startswith(HDF5_SIGNATURE):
        return _inspect_h5(path, limits)
    raise UnsupportedFile(f"{path.name} is {_describe(head)}, not a Keras model (.keras zip or .h5 HDF5)")


def _inspect_keras(path: Path, limits: InspectLimits) -> ModelInspection:
    zf, infos = _open_zip(path, limits, ModelRejected, "the .keras archive")
    with zf, _malformed(path.name, "zip archive"):
        names = {info.filename: info for info in infos}
        for member in names:
            top = member.split("/", 1)[0]
            if member in KERAS_MEMBERS:
                continue
            reason = REFUSED_MEMBER_REASONS.get(member) or REFUSED_MEMBER_REASONS.get(top)
            if CONFIG_MEMBER not in names:
                raise UnsupportedFile(f"{path.name} is a zip archive without {CONFIG_MEMBER} "
                                      f"(members: {sorted(names)[:5]}), not a Keras 3 model")
            raise ModelRejected(f"{path.name}: unexpected member {member!r} in the .keras archive"
                                + (f": {reason}" if reason else f"; only {sorted(KERAS_MEMBERS)} are accepted"))
        if CONFIG_MEMBER not in names:
            raise UnsupportedFile(f"{path.name} is a zip archive without {CONFIG_MEMBER}, not a Keras 3 model")
        if WEIGHTS_MEMBER not in names:
            raise ModelRejected(f"{path.name}: the .keras archive has no {WEIGHTS_MEMBER} member")

        raw = _read_member(zf, names[CONFIG_MEMBER], limits.max_config_bytes, "max_config_bytes", ModelRejected)
        config = _parse_json(raw, CONFIG_MEMBER, limits)
        walk = _walk_model_config(config, CONFIG_MEMBER, limits)

        keras_version = None
        if METADATA_MEMBER in names:
            meta_raw = _read_member(zf, names[METADATA_MEMBER], MAX_METADATA_BYTES, "metadata size",
                                    ModelRejected)
            metadata = _parse_json(meta_raw, METADATA_MEMBER, limits, max_bytes=MAX_METADATA_BYTES)
            if not isinstance(metadata, dict):
                raise ModelRejected(f"{METADATA_MEMBER} must be a JSON object")
            version = metadata.get("keras_version")
            keras_version = version if isinstance(version, str) else None

        with _member_file(path, zf, names[WEIGHTS_MEMBER], limits) as weights:
            with _malformed(WEIGHTS_MEMBER, "HDF5 file"), _h5_file(weights, WEIGHTS_MEMBER) as f:
                summary = _check_h5(f, WEIGHTS_MEMBER, limits, optimizer_groups=("optimizer",))

    compile_config = config.get("compile_config")
    return ModelInspection(
        format="keras",
        model_config=config,
        compile_config=compile_config if isinstance(compile_config, dict) and compile_config else None,
        layer_count=walk.compute_layers,
        weight_count=summary.weight_elements,
        keras_version=keras_version,
        class_names=frozenset(walk.class_names),
        sequential_layers=walk.sequential_layers,
    )


def _inspect_h5(path: Path, limits: InspectLimits) -> ModelInspection:
    with _malformed(path.name, "HDF5 file"), _h5_file(path, path.name) as f:
        summary = _check_h5(f, path.name, limits, optimizer_groups=("optimizer_weights",))
        raw_config = _read_h5_text_attr(f, "model_config", path.name, limits)
        if raw_config is None:
            raise ModelRejected(f"{path.name}: the HDF5 file has no model_config attribute (a weights-only "
                                "file?); save the whole model")
        raw_training = _read_h5_text_attr(f, "training_config", path.name, limits)
        keras_version = _read_h5_text_attr(f, "keras_version", path.name, limits)
        has_model_weights = "model_weights" in f
    source = f"{path.name} model_config"
    config = _parse_json(raw_config, source, limits)
    walk = _walk_model_config(config, source, limits)
    training_config = None
    if raw_training is not None:
        training_config = _parse_json(raw_training, f"{path.name} training_config", limits)
        walk.source = path.name
        walk_compile_config(walk, training_config, "training_config")
    if not has_model_weights:
        raise ModelRejected(f"{path.name}: the HDF5 file has no model_weights group")
    return ModelInspection(
        format="h5",
        model_config=config,
        compile_config=training_config if isinstance(training_config, dict) and training_config else None,
        layer_count=walk.compute_layers,
        weight_count=summary.weight_elements,
        keras_version=keras_version,
        class_names=frozenset(walk.class_names),
        sequential_layers=walk.sequential_layers,
    )


_NPZ_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.npy$")


def inspect_npz(path: str | Path, limits: InspectLimits = InspectLimits()
                ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Check a dataset .npz from its zip directory and .npy headers alone; return {array name: (shape, dtype)}.

    Raises UnsupportedFile for anything that is not a zip archive and DataError naming the array otherwise.
    """
    from numpy.lib import format as npy_format

    path = Path(path)
    head = _sniff(path, limits, DataError)
    if not (head.startswith(ZIP_SIGNATURE) or head.startswith(EMPTY_ZIP_SIGNATURE)):
        raise UnsupportedFile(f"{path.name} is {_describe(head)}, not a NumPy .npz archive")
    zf, infos = _open_zip(path, limits, DataError, "the .npz archive")
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zf, _malformed(path.name, "zip archive", DataError):
        if not infos:
            raise DataError(f"{path.name}: the .npz archive holds no arrays")
        for info in infos:
            member = info.filename
            if not _NPZ_NAME.match(member):
                raise DataError(f"{path.name}: member {member!r} is not a plain NAME.npy array name")
            key = member[: -len(".npy")]
            try:
                with zf.open(info) as f:
                    version = npy_format.read_magic(f)
                    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
                    if version not in readers:
                        raise DataError(f"{path.name}: array {key!r} uses .npy format version {version}; "
                                        "only 1.0 and 2.0 are accepted")
                    shape, _fortran, dtype = readers[version](f)
                    header_bytes = f.tell()
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as e:
                raise DataError(f"{path.name}: array {key!r} has a damaged .npy header: {str(e)[:200]}") from None
            if not _plain_numeric(dtype):
                raise DataError(f"{path.name}: array {key!r} has dtype {dtype}; only bool, integer and float "
                                "arrays are accepted (no objects, pickles, strings or records)")
            elements = math.prod(shape)
            if any(d < 0 for d in shape) or elements > limits.max_tensor_elements:
                raise DataError(f"{path.name}: array {key!r} declares shape {shape} ({elements} elements); the "
                                f"limit is {limits.max_tensor_elements} (max_tensor_elements)")
            expected = header_bytes + elements * dtype.itemsize
            if info.file_size != expected:
                raise DataError(f"{path.name}: array {key!r} declares shape {shape} {dtype} "
                                f"({expected} bytes with its header) but the member holds {info.file_size} bytes")
            arrays[key] = (tuple(int(d) for d in shape), dtype)
    return arrays

