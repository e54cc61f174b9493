"""The config walk: every object a parsed model config (or compile / training config) names, against the allow-list.

`walk_model_config` visits the whole document. Every dict that carries ``class_name``, ``module`` or
``registered_name`` is a serialized object and must be a stock Keras class from `allowlist`, under one of its stock
modules, with no registered name other than its own; serialized functions may only name stock losses, metrics and
activations; ``__lambda__`` and other special objects that execute or import anything are refused; activation
strings must be stock names; no string anywhere may look like a file path or URL (file-backed layer state). Layer
counts and the weight sizes a config declares (Keras allocates them while building the model, before it reads any
weights) are bounded by `InspectLimits`. Every refusal is a ModelRejected naming the layer and the path in the
document.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.engine.errors import ModelRejected
from workers.engine.inspection.allowlist import (
    ACTIVATION_NAMES,
    ALLOWED_CLASSES,
    COMPILE_NAMES,
    CONTAINER_MODULES,
    DATA_OBJECTS,
    FUNCTION_MODULES,
    NUMERIC_DTYPE_NAMES,
    REFUSED_CLASS_REASONS,
    REGISTERED_NAME,
    STOCK_FUNCTION_NAMES,
    is_path_like,
)
from workers.engine.inspection.limits import InspectLimits


@dataclass
class ConfigWalk:
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
        if REGISTERED_NAME.match(text):
            self.fail(
                ctx,
                f"value {text[:80]!r} at {path} names a registered custom object; only stock Keras "
                "objects are accepted",
            )
        if is_path_like(text):
            self.fail(
                ctx,
                f"value {text[:80]!r} at {path} looks like a file path or URL; "
                "file-backed state and downloads are not accepted",
            )
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
            self.fail(
                ctx,
                f"class '{class_name}'{where} names module {module!r}; only the stock Keras "
                f"module(s) {allowed} are allowed",
            )
        if registered is not None and registered != class_name:
            self.fail(
                ctx, f"class '{class_name}'{where} has registered_name {registered!r}, which is not the stock one"
            )
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
            self.fail(
                ctx, f"the config declares a {declared}-element weight; the limit is {limit} (max_tensor_elements)"
            )
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
            self.fail(
                ctx,
                f"serialized function {shown!r}{where} is not allowed: only stock Keras losses, "
                "metrics and activations may be referenced by a model file",
            )
        if registered not in (None, "function", name):
            self.fail(
                ctx,
                f"serialized function {shown!r}{where} has registered_name {registered!r}, which is not the stock one",
            )
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
def _check_activation(walk: ConfigWalk, value: Any, path: str, ctx: str) -> None:
    if isinstance(value, str) and value not in ACTIVATION_NAMES:
        walk.fail(ctx, f"activation {value[:80]!r} at {path} is not a stock Keras activation name")


def _check_metric_fn(walk: ConfigWalk, value: Any, path: str, ctx: str) -> None:
    if isinstance(value, str) and value not in STOCK_FUNCTION_NAMES:
        walk.fail(ctx, f"function name {value[:80]!r} at {path} is not a stock Keras loss or metric")
    if not isinstance(value, (str, dict)):
        walk.fail(ctx, f"'fn' at {path} must name a stock Keras loss or metric")


KEY_CHECKS: dict[str, Callable[[ConfigWalk, Any, str, str], None]] = {
    "activation": _check_activation,
    "recurrent_activation": _check_activation,
    "fn": _check_metric_fn,
}


# -- checks keyed by layer class (file-backed state) -----------------------------------------------------------
def _inline_only(*fields: str, what: str) -> Callable[[ConfigWalk, dict, str], None]:
    def check(walk: ConfigWalk, config: dict, ctx: str) -> None:
        for name in fields:
            value = config.get(name)
            if value is not None and not isinstance(value, (list, int, float)):
                walk.fail(
                    ctx,
                    f"'{name}' must be inline {what}, not {type(value).__name__} "
                    f"({str(value)[:80]!r}): {what} files are not accepted",
                )

    return check


CLASS_CHECKS: dict[str, Callable[[ConfigWalk, dict, str], None]] = {
    "StringLookup": _inline_only("vocabulary", "idf_weights", what="vocabulary"),
    "IntegerLookup": _inline_only("vocabulary", "idf_weights", what="vocabulary"),
    "TextVectorization": _inline_only("vocabulary", "idf_weights", what="vocabulary"),
    "Hashing": _inline_only("salt", what="salt"),
    "Normalization": _inline_only("mean", "variance", what="statistics"),
}


# -- sizes the config declares (Keras allocates them while building the model, before loading weights) ------------
SIZE_FIELDS = (
    "units",
    "filters",
    "input_dim",
    "output_dim",
    "depth_multiplier",
    "n",
    "max_tokens",
    "num_bins",
    "output_sequence_length",
    "height",
    "width",
)


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
    **{
        name: _separable_params
        for name in ("SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D")
    },
    **{
        f"{stem}{d}D{suffix}": _conv_params
        for stem in ("Conv", "Convolution")
        for d in (1, 2, 3)
        for suffix in ("", "Transpose")
    },
}


def walk_model_config(config: Any, source: str, limits: InspectLimits) -> ConfigWalk:
    """Walk a whole model config (compile_config included); the top-level object must be a Keras model."""
    walk = ConfigWalk(source=source, limits=limits)
    if not isinstance(config, dict):
        raise ModelRejected(f"{source}: the model config must be a JSON object, got {type(config).__name__}")
    walk.visit({k: v for k, v in config.items() if k != "compile_config"}, "", "")
    class_name = config.get("class_name")
    if class_name not in CONTAINER_MODULES:
        raise ModelRejected(
            f"{source}: the top-level object is {class_name!r}; expected a Keras model ({', '.join(CONTAINER_MODULES)})"
        )
    if config.get("compile_config") is not None:
        walk_compile_config(walk, config["compile_config"], "compile_config")
    return walk


def walk_compile_config(walk: ConfigWalk, config: Any, path: str) -> None:
    if not isinstance(config, dict):
        walk.fail("", f"{path} must be a JSON object")
    walk.visit(config, path, f"{path}: ", compile_key="")
