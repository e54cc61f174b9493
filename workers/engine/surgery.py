"""Structured pruning with real model surgery: remove whole Dense units and Conv filters, rebuild a smaller model.

After Torch-Pruning, scaled down to Keras 3 Sequential and functional models:

1. **Trace channels.** Walk the model graph once (inputs to outputs). Every tensor gets a *channel map*: for
   each entry of its last axis, the id of the channel it carries. Prunable producers (Dense, Conv1D/2D/3D,
   SeparableConv1D/2D) create fresh ids; one handler per layer type says how ids move through the layer
   (BatchNormalization and pooling pass them on, Flatten repeats them per position (row = spatial * C + c),
   DepthwiseConv repeats each m times (c*m .. c*m+m-1), Concatenate appends them at their offsets, and
   Add/Subtract/Multiply/Average/Maximum/Minimum *unite* the ids of their inputs position by position).
2. **Barriers.** A layer without a handler (Reshape, Permute, Softmax, LayerNormalization over the channel
   axis (over other axes it passes channels through), RNNs, custom layers, raw keras.ops, layers called more
   than once, nested models, channels_first layers, ...) marks every channel reaching it as fixed, and so does every model output: a fixed channel is never removed, so
   no producer is ever pruned in a way we cannot reproduce exactly. Nested models are treated as barriers
   (not flattened): their insides stay untouched and the producers feeding them keep all their units.
3. **Groups.** Channels united by merges form one *class* (removed together); producers sharing classes form
   one *group* (e.g. every branch of a residual chain). Each member scores its units with the criterion
   (`importance.py`), scores are normalized per member (mean 1) and summed per class. Weight criteria read the
   member's kernel (SeparableConv: its pointwise kernel), times |gamma| / sqrt(moving_variance + epsilon) of a
   BatchNormalization that follows it (through pointwise layers): the BatchNorm divides out the kernel's scale,
   so the kernel norm alone does not say what a unit passes on (after Liu et al. 2017, "network slimming",
   and Torch-Pruning's BN-aware group importance); data criteria read the member's output followed
   through pointwise layers (BatchNorm, activations, dropout), so APoZ counts the zeros after the ReLU. The
   calibration samples go through a probe model (a compiled predict, batch by batch, scores averaged).
4. **Select.** A group is pruned only if every member is selected (LayerSelection include/exclude by layer or
   class name, overrides[name].skip); overrides[name].keep_ratio sets the group's ratio (the largest one when
   coupled members disagree) and takes that group out of the global ranking. scope="layer": each group keeps
   ceil(keep_ratio * units); scope="global": one ranking over all groups of scores normalized per group.
   Counts are rounded up to a multiple of round_to (capped at the original count) and at least
   max(1, round_to) units stay in every group.
5. **Rebuild.** New layer configs (units/filters) -> `from_config` (Sequential stays Sequential) -> weights
   sliced by the same handlers. Layer names are kept and no custom object is introduced: a model of stock
   layers stays one, so `.keras` save / `load_model` round-trips without custom_objects.

`masked_reference(model, report)` builds the model the rebuilt one must match: a copy of the original whose
consumers (Dense/Conv kernels, SeparableConv pointwise kernels) have the input rows of removed channels set to
zero. Its outputs equal the rebuilt model's to float tolerance, which is what the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from workers.engine import importance
from workers.engine.errors import DataError, ModelRejected, SpecError
from workers.spec import LayerOverride, LayerSelection

CALIBRATION_BATCH = 128  # samples per compiled predict batch when ranking units on data ...
CALIBRATION_BYTES = 256 * 2**20  # ... fewer when the probed activations of one batch would exceed this

# Activations that act on each value alone: a unit's output does not depend on its neighbours, so removing
# some units leaves the others unchanged. Anything else (softmax, glu, custom functions) fixes the outputs.
POINTWISE_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish",
    "sigmoid", "hard_sigmoid", "log_sigmoid", "tanh", "hard_tanh", "tanh_shrink", "softplus", "softsign",
    "exponential", "hard_silu", "hard_swish", "sparse_plus", "squareplus", "soft_shrink", "hard_shrink",
})


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class PrunedGroup:
    """Producers whose output channels are coupled (pruned identically) and what happened to them."""

    layers: list[str]
    units_before: int
    units_after: int
    kept_indices: dict[str, list[int]]
    dependents: list[str] = field(default_factory=list)
    keep_ratio: float = 1.0


@dataclass(frozen=True)
class StructuredReport:
    criterion: str
    scope: str
    keep_ratio: float
    round_to: int
    groups: list[PrunedGroup]
    skipped: dict[str, str]
    params_before: int
    params_after: int
    compensated: list[str] = field(default_factory=list)  # consumers whose bias / BatchNorm mean took the shift
    # consumer -> (where the shift went: "bias" or the BatchNorm's name, shift per consumer output unit)
    shifts: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("shifts")
        return out


# --------------------------------------------------------------------------- channel bookkeeping


class _Channels:
    """Union-find over channel ids. Id 0 stands for 'not produced by a prunable layer' and is always fixed."""

    def __init__(self):
        self.parent = [0]
        self.fixed: dict[int, str] = {0: "not produced by a prunable layer"}

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        why = self.fixed.pop(rb, None)
        if why is not None and ra not in self.fixed:
            self.fixed[ra] = why

    def fix(self, ids: np.ndarray, reason: str) -> None:
        """Mark the classes of `ids` as never removable (the first reason is kept for the report)."""
        for i in np.unique(ids):
            self.fixed.setdefault(self.find(int(i)), reason)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def _fixed_map(length: int | None) -> np.ndarray:
    return np.zeros(int(length or 0), dtype=np.int64)


# --------------------------------------------------------------------------- layer handlers


def _weights(layer) -> list[tuple[str, np.ndarray]]:
    return [(v.name, np.asarray(w)) for v, w in zip(layer.weights, layer.get_weights())]


def _data_format_reason(layer) -> str | None:
    fmt = getattr(layer, "data_format", None)
    if fmt not in (None, "channels_last"):
        return f"data_format={fmt!r} (only channels_last is traced)"
    return None


def _activation_name(layer) -> Any:
    return layer.get_config().get("activation", "linear")


def _quantized_reason(layer) -> str | None:
    if getattr(layer, "lora_enabled", False):
        return "LoRA-enabled"
    mode = getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None)
    if mode is not None:
        return f"quantized ({mode})"
    return None


class _Handler:
    """How one layer type moves channels. Default: a channelwise pass-through without weights to slice."""

    producer = False  # creates fresh output channels (units / filters) that can be pruned
    consumer = False  # mixes input channels through a kernel whose input rows can be sliced / zeroed
    pointwise = False  # output value depends on the same channel at the same position only (activation tracing)

    def barrier_reason(self, layer, in_shapes: list[tuple], in_maps: list[np.ndarray]) -> str | None:
        return _data_format_reason(layer)

    def fixed_output_reason(self, layer) -> str | None:
        return None

    def propagate(self, g: _Graph, layer, in_maps: list[np.ndarray], in_shapes, out_shapes) -> list[np.ndarray]:
        return [in_maps[0]]

    def slice(self, layer, weights, keep_in: list[np.ndarray], keep_out: np.ndarray) -> list[np.ndarray]:
        return [w for _, w in weights]

    def zero_inputs(self, layer, weights, removed_in: list[np.ndarray]) -> list[np.ndarray]:
        return [w for _, w in weights]

    def resize(self, config: dict, units: int) -> None:
        raise NotImplementedError

    def kernel(self, layer) -> np.ndarray:
        raise NotImplementedError


class _PassThrough(_Handler):
    def __init__(self, pointwise: bool = False):
        self.pointwise = pointwise


class _Activation(_Handler):
    pointwise = True

    def barrier_reason(self, layer, in_shapes, in_maps):
        name = _activation_name(layer)
        if name not in POINTWISE_ACTIVATIONS:
            return f"activation {name!r} mixes channels"
        return None


class _BatchNorm(_Handler):
    pointwise = True

    def barrier_reason(self, layer, in_shapes, in_maps):
        rank = len(in_shapes[0])
        if layer.axis not in (-1, rank - 1):
            return f"axis={layer.axis} is not the channel (last) axis"
        return None

    def slice(self, layer, weights, keep_in, keep_out):
        return [np.take(w, keep_in[0], axis=0) for _, w in weights]


class _LayerNorm(_Handler):
    """Only when it normalizes over non-channel axes: then each channel is normalized on its own."""

    def barrier_reason(self, layer, in_shapes, in_maps):
        rank = len(in_shapes[0])
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if any(a % rank == rank - 1 for a in axes):
            return "it normalizes over the channel axis (removing channels would change the statistics)"
        return None


class _Merge(_Handler):
    """Add, Subtract, Multiply, Average, Maximum, Minimum: channel i of every input is coupled."""

    def barrier_reason(self, layer, in_shapes, in_maps):
        if len({len(m) for m in in_maps}) != 1:
            return "its inputs have different channel counts (broadcasting)"
        return None

    def propagate(self, g, layer, in_maps, in_shapes, out_shapes):
        first = in_maps[0]
        for other in in_maps[1:]:
            for a, b in zip(first, other):
                g.channels.union(a, b)
        return [first]


class _Concatenate(_Merge):
    def barrier_reason(self, layer, in_shapes, in_maps):
        if self._on_channels(layer, in_shapes):
            return None
        return super().barrier_reason(layer, in_shapes, in_maps)

    @staticmethod
    def _on_channels(layer, in_shapes) -> bool:
        rank = len(in_shapes[0])
        return layer.axis % rank == rank - 1

    def propagate(self, g, layer, in_maps, in_shapes, out_shapes):
        if self._on_channels(layer, in_shapes):
            return [np.concatenate(in_maps)]
        return super().propagate(g, layer, in_maps, in_shapes, out_shapes)


class _Flatten(_Handler):
    """channels_last: feature index = spatial_index * C + c, so the map repeats once per position."""

    def barrier_reason(self, layer, in_shapes, in_maps):
        reason = _data_format_reason(layer)
        if reason:
            return reason
        if any(d is None for d in in_shapes[0][1:]):
            return "its input has unknown spatial dimensions"
        return None

    def propagate(self, g, layer, in_maps, in_shapes, out_shapes):
        positions = int(np.prod(in_shapes[0][1:-1])) if len(in_shapes[0]) > 2 else 1
        return [np.tile(in_maps[0], positions)]


class _Dense(_Handler):
    producer = consumer = True
    kernel_name = "kernel"

    def barrier_reason(self, layer, in_shapes, in_maps):
        reason = _quantized_reason(layer) or _data_format_reason(layer)
        if reason:
            return reason
        rows = tuple(getattr(layer, self.kernel_name).shape)[-2]
        if len(in_maps) != 1 or len(in_maps[0]) != rows:
            return "its input channels could not be traced"
        return None

    def fixed_output_reason(self, layer):
        name = _activation_name(layer)
        if name not in POINTWISE_ACTIVATIONS:
            return f"its activation {name!r} mixes units"
        return None

    def propagate(self, g, layer, in_maps, in_shapes, out_shapes):
        return [g.new_producer(layer, self, out_shapes[0][-1])]

    def slice(self, layer, weights, keep_in, keep_out):
        out = []
        for name, w in weights:
            if name == self.kernel_name:
                w = np.take(np.take(w, keep_in[0], axis=-2), keep_out, axis=-1)
            elif name == "bias":
                w = np.take(w, keep_out, axis=0)
            out.append(w)
        return out

    def zero_inputs(self, layer, weights, removed_in):
        out = []
        for name, w in weights:
            if name == self.kernel_name:
                w = w.copy()
                w[..., removed_in[0], :] = 0
            out.append(w)
        return out

    def resize(self, config, units):
        config["units"] = int(units)

    def kernel(self, layer):
        return dict(_weights(layer))[self.kernel_name]


class _Conv(_Dense):
    def barrier_reason(self, layer, in_shapes, in_maps):
        if getattr(layer, "groups", 1) != 1:
            return f"grouped convolution (groups={layer.groups})"
        return super().barrier_reason(layer, in_shapes, in_maps)

    def resize(self, config, units):
        config["filters"] = int(units)


class _Depthwise(_Handler):
    """Follows its input channels; with depth_multiplier m, input channel c feeds outputs c*m .. c*m+m-1."""

    kernel_names = ("kernel", "depthwise_kernel")  # Keras 3 names it "kernel"; older releases "depthwise_kernel"

    def barrier_reason(self, layer, in_shapes, in_maps):
        reason = _quantized_reason(layer) or _data_format_reason(layer)
        if reason:
            return reason
        name = _activation_name(layer)
        if name not in POINTWISE_ACTIVATIONS:
            return f"activation {name!r} mixes channels"
        kernel = next(v for v in layer.weights if v.name in self.kernel_names)
        if len(in_maps) != 1 or len(in_maps[0]) != tuple(kernel.shape)[-2]:
            return "its input channels could not be traced"
        return None

    def propagate(self, g, layer, in_maps, in_shapes, out_shapes):
        return [np.repeat(in_maps[0], layer.depth_multiplier)]

    def slice(self, layer, weights, keep_in, keep_out):
        out = []
        for name, w in weights:
            if name in self.kernel_names:
                w = np.take(w, keep_in[0], axis=-2)
            elif name == "bias":
                w = np.take(w, keep_out, axis=0)
            out.append(w)
        return out


class _Separable(_Conv):
    """A depthwise part that follows its input channels, then a pointwise kernel that produces filters."""

    kernel_name = "pointwise_kernel"

    def barrier_reason(self, layer, in_shapes, in_maps):
        reason = _quantized_reason(layer) or _data_format_reason(layer)
        if reason:
            return reason
        if len(in_maps) != 1 or len(in_maps[0]) != tuple(layer.depthwise_kernel.shape)[-2]:
            return "its input channels could not be traced"
        return None

    @staticmethod
    def _expand(idx: np.ndarray, m: int) -> np.ndarray:
        return (np.asarray(idx, dtype=np.int64)[:, None] * m + np.arange(m)).ravel()

    def slice(self, layer, weights, keep_in, keep_out):
        mid = self._expand(keep_in[0], layer.depth_multiplier)
        out = []
        for name, w in weights:
            if name == "depthwise_kernel":
                w = np.take(w, keep_in[0], axis=-2)
            elif name == "pointwise_kernel":
                w = np.take(np.take(w, mid, axis=-2), keep_out, axis=-1)
            elif name == "bias":
                w = np.take(w, keep_out, axis=0)
            out.append(w)
        return out

    def zero_inputs(self, layer, weights, removed_in):
        mid = self._expand(removed_in[0], layer.depth_multiplier)
        out = []
        for name, w in weights:
            if name == "pointwise_kernel":
                w = w.copy()
                w[..., mid, :] = 0
            out.append(w)
        return out


def _handlers() -> dict[str, _Handler]:
    table: dict[str, _Handler] = {"Dense": _Dense(), "BatchNormalization": _BatchNorm(),
                                  "LayerNormalization": _LayerNorm(), "Flatten": _Flatten(),
                                  "Concatenate": _Concatenate(), "Activation": _Activation()}
    for name in ("Conv1D", "Conv2D", "Conv3D"):
        table[name] = _Conv()
    for name in ("DepthwiseConv1D", "DepthwiseConv2D"):
        table[name] = _Depthwise()
    for name in ("SeparableConv1D", "SeparableConv2D"):
        table[name] = _Separable()
    for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
        table[name] = _Merge()
    for name in ("ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
                 "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
                 "Identity"):
        table[name] = _PassThrough(pointwise=True)
    for name in ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
                 "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
                 "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D",
                 "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D",
                 "UpSampling2D", "UpSampling3D"):
        table[name] = _PassThrough()
    return table


HANDLERS: dict[str, _Handler] = _handlers()


def handler_for(layer) -> _Handler | None:
    """The handler for a stock Keras layer, None for anything else (subclasses included: they may override call)."""
    name = type(layer).__name__
    if getattr(keras.layers, name, None) is not type(layer):
        return None
    return HANDLERS.get(name)


# --------------------------------------------------------------------------- graph analysis


@dataclass
class _Node:
    layer: Any
    inputs: list  # KerasTensors
    outputs: list


@dataclass
class _Producer:
    layer: Any
    handler: _Handler
    ids: np.ndarray
    output: Any = None  # KerasTensor


class _Graph:
    """One pass over the model graph: channel maps of every tensor, producers, couplings and barriers."""

    def __init__(self, model):
        self.model = model
        self.channels = _Channels()
        self.nodes = _topological_nodes(model)
        self.maps: dict[int, np.ndarray] = {}
        self.in_maps: dict[str, list[np.ndarray]] = {}
        self.out_maps: dict[str, list[np.ndarray]] = {}
        self.handlers: dict[str, _Handler] = {}
        self.producers: dict[str, _Producer] = {}
        self.barriers: dict[str, str] = {}  # layer (or op) name -> why channels cannot be traced through it
        self.blocked_producers: dict[str, str] = {}  # prunable layer types that are barriers here
        self.consumers: dict[int, list[_Node]] = {}
        calls: dict[int, int] = {}
        for node in self.nodes:
            calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
            for t in node.inputs:
                self.consumers.setdefault(id(t), []).append(node)
        self.node_of: dict[str, _Node] = {}
        for node in self.nodes:
            self.node_of[node.layer.name] = node
            self._visit(node, calls[id(node.layer)])
        for t in keras.tree.flatten(model.outputs):
            self.channels.fix(self.maps[id(t)], f"it reaches the model output of '{t._keras_history.operation.name}'")
        self.root = self.channels.roots()
        self.output_ids = {id(t) for t in keras.tree.flatten(model.outputs)}

    def new_producer(self, layer, handler: _Handler, units: int) -> np.ndarray:
        ids = self.channels.new(int(units))
        self.producers[layer.name] = _Producer(layer, handler, ids)
        reason = handler.fixed_output_reason(layer)
        if reason:
            self.channels.fix(ids, reason)
        return ids

    def _visit(self, node: _Node, calls: int) -> None:
        layer = node.layer
        in_maps = [self.maps[id(t)] for t in node.inputs]
        in_shapes = [tuple(t.shape) for t in node.inputs]
        out_shapes = [tuple(t.shape) for t in node.outputs]
        if isinstance(layer, keras.layers.InputLayer):
            outs = [_fixed_map(s[-1] if s else 0) for s in out_shapes]
        else:
            handler = handler_for(layer)
            reason = None
            if calls > 1:
                reason = f"shared (called {calls} times)"
            elif isinstance(layer, keras.Model):
                reason = "a nested model (treated as a barrier, not flattened)"
            elif handler is None:
                reason = f"not traced ({type(layer).__name__})"
            elif not in_shapes or any(len(s) < 2 for s in in_shapes) or len(node.outputs) != 1:
                reason = "its inputs/outputs are not channel tensors"
            else:
                reason = handler.barrier_reason(layer, in_shapes, in_maps)
            if reason is not None:
                self.barriers[layer.name] = reason
                if handler is not None and handler.producer:
                    self.blocked_producers[layer.name] = reason
                for m in in_maps:
                    self.channels.fix(m, f"it feeds '{layer.name}', a barrier: {reason}")
                outs = [_fixed_map(s[-1] if s else 0) for s in out_shapes]
            else:
                self.handlers[layer.name] = handler
                outs = handler.propagate(self, layer, in_maps, in_shapes, out_shapes)
                if layer.name in self.producers:
                    self.producers[layer.name].output = node.outputs[0]
        self.in_maps[layer.name] = in_maps
        self.out_maps[layer.name] = outs
        for t, m in zip(node.outputs, outs):
            self.maps[id(t)] = m

    def is_fixed(self, root: int) -> bool:
        return int(root) in self.channels.fixed

    def fixed_reason(self, root: int) -> str:
        return self.channels.fixed.get(int(root), "")

    def _pointwise_chain(self, producer: _Producer) -> list:
        """The layers that follow the producer's output one to one and act on each unit alone (BatchNorm,
        activations, dropout), in order; stops at a model output, a fork or any other layer."""
        chain = []
        t = producer.output
        while id(t) not in self.output_ids:
            users = self.consumers.get(id(t), [])
            if len(users) != 1 or len(users[0].inputs) != 1:
                break
            handler = self.handlers.get(users[0].layer.name)
            if handler is None or not handler.pointwise:
                break
            chain.append(users[0])
            t = users[0].outputs[0]
        return chain

    def activation_tensor(self, producer: _Producer):
        """The producer's output followed through pointwise layers (BatchNorm, activations, dropout)."""
        chain = self._pointwise_chain(producer)
        return chain[-1].outputs[0] if chain else producer.output

    def normalization_scale(self, producer: _Producer) -> np.ndarray | None:
        """|gamma| / sqrt(moving_variance + epsilon) per unit of the BatchNormalization(s) in the producer's
        pointwise chain, or None without one. A BatchNorm divides out the scale of the kernel before it: what a
        unit passes on is its kernel times this factor, so weight criteria multiply by it."""
        scale = None
        for node in self._pointwise_chain(producer):
            layer = node.layer
            if not isinstance(self.handlers.get(layer.name), _BatchNorm):
                continue
            factor = 1.0 / np.sqrt(np.asarray(layer.moving_variance, dtype=np.float64) + float(layer.epsilon))
            if getattr(layer, "scale", False) and getattr(layer, "gamma", None) is not None:
                factor = factor * np.abs(np.asarray(layer.gamma, dtype=np.float64))
            scale = factor if scale is None else scale * factor
        return scale


def _topological_nodes(model) -> list[_Node]:
    if not isinstance(model, keras.Model):
        raise ModelRejected(f"structured pruning needs a keras.Model, got {type(model).__name__}")
    if not (isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"):
        raise ModelRejected(
            f"structured pruning needs a Sequential or functional model; '{model.name}' is a subclassed "
            f"model ({type(model).__name__}) whose graph cannot be rebuilt"
        )
    try:
        outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError) as exc:
        raise ModelRejected(f"model '{model.name}' has no defined inputs/outputs (build it first): {exc}") from None
    if not outputs:
        raise ModelRejected(f"model '{model.name}' has no defined outputs (build it first)")

    def node_of(t):
        h = t._keras_history
        return h.operation._inbound_nodes[h.node_index]

    order: list = []
    state: dict[int, bool] = {}  # False: on the stack, True: done
    for out in outputs:
        stack = [(node_of(out), False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                if not state.get(id(node)):
                    state[id(node)] = True
                    order.append(node)
                continue
            if id(node) in state:
                continue
            state[id(node)] = False
            stack.append((node, True))
            for t in reversed(node.input_tensors):
                parent = node_of(t)
                if id(parent) not in state:
                    stack.append((parent, False))
    return [_Node(n.operation, list(n.input_tensors), list(n.output_tensors)) for n in order]


# --------------------------------------------------------------------------- selection


def _check_names(model, selection: LayerSelection, overrides: Mapping[str, LayerOverride]) -> None:
    names = {layer.name for layer in model.layers}
    classes = {type(layer).__name__ for layer in model.layers}
    for key in ("include", "exclude"):
        for entry in getattr(selection, key) or []:
            if entry not in names and entry not in classes and not hasattr(keras.layers, entry):
                raise SpecError(f"layers.{key} entry '{entry}' names no layer and no Keras layer class of model "
                                f"'{model.name}'", field=f"layers.{key}")
    for name in overrides:
        if name not in names:
            raise SpecError(f"layers.overrides names layer '{name}', which model '{model.name}' does not have",
                            field=f"layers.overrides.{name}")


def _not_selected_reason(layer, selection: LayerSelection, overrides: Mapping[str, LayerOverride]) -> str | None:
    keys = {layer.name, type(layer).__name__}
    if selection.include is not None and not keys & set(selection.include):
        return "not in layers.include"
    if keys & set(selection.exclude):
        return "in layers.exclude"
    o = overrides.get(layer.name)
    if o is not None and o.skip:
        return "layers.overrides skip=true"
    return None


# --------------------------------------------------------------------------- groups and scores


@dataclass
class _Group:
    members: list[str]
    classes: np.ndarray  # prunable class roots, in order of first appearance
    all_classes: int  # distinct classes (prunable and fixed) over the members' channels
    keep_ratio: float = 1.0
    overridden: bool = False
    scores: np.ndarray | None = None
    keep: int = 0


def _groups(g: _Graph) -> tuple[list[_Group], dict[str, str]]:
    skipped: dict[str, str] = {}
    owner_of_class: dict[int, str] = {}
    link = {name: name for name in g.producers}

    def find(n):
        while link[n] != n:
            link[n] = link[link[n]]
            n = link[n]
        return n

    for name, p in g.producers.items():
        for r in g.root[p.ids]:
            if g.is_fixed(r):
                continue
            other = owner_of_class.setdefault(int(r), name)
            a, b = find(other), find(name)
            if a != b:
                link[b] = a
    members: dict[str, list[str]] = {}
    for name in g.producers:
        members.setdefault(find(name), []).append(name)
    groups = []
    for names in members.values():
        roots = np.concatenate([g.root[g.producers[n].ids] for n in names])
        _, first = np.unique(roots, return_index=True)
        ordered = roots[np.sort(first)]
        prunable = np.array([r for r in ordered if not g.is_fixed(r)], dtype=np.int64)
        if prunable.size == 0:
            for n in names:
                ids = g.producers[n].ids
                skipped[n] = f"not pruned: {g.fixed_reason(g.root[ids[0]])}" if len(ids) else "not pruned: no units"
            continue
        groups.append(_Group(names, prunable, len(ordered)))
    return groups, skipped


def _member_scores(g: _Graph, groups: list[_Group], criterion: importance.Criterion, x_calib) -> dict[str, np.ndarray]:
    names = [n for grp in groups for n in grp.members]
    if criterion.needs == "weights":
        out = {}
        for n in names:
            p = g.producers[n]
            scores = criterion(p.handler.kernel(p.layer))
            scale = g.normalization_scale(p)
            out[n] = scores if scale is None else scores * scale
        return out
    tensors = [g.activation_tensor(g.producers[n]) for n in names]
    return dict(zip(names, _activation_scores(g.model, tensors, criterion, x_calib)))


def _activation_scores(model, tensors: list, criterion: importance.Criterion, x_calib) -> list[np.ndarray]:
    if x_calib is None:
        raise DataError(f"criterion '{criterion.name}' ranks units on data: x_calib (calibration samples) is required",
                        field="x_calib")
    leaves = keras.tree.flatten(x_calib)
    n = len(leaves[0]) if leaves else 0
    if n == 0:
        raise DataError(f"x_calib is empty: criterion '{criterion.name}' needs at least one sample", field="x_calib")
    for leaf in leaves:
        if len(leaf) != n:
            raise DataError(f"x_calib arrays have different sample counts ({len(leaf)} vs {n})", field="x_calib")
        if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.all(np.isfinite(leaf)):
            raise DataError("x_calib contains NaN or infinite values", field="x_calib")
    unique: dict[int, Any] = {id(t): t for t in tensors}
    probe = keras.Model(model.inputs, list(unique.values()))
    sums = [0.0] * len(unique)
    counts = [0] * len(unique)
    size = _calibration_batch(unique.values())
    for start in range(0, n, size):
        batch = keras.tree.map_structure(lambda a: np.asarray(a[start:start + size]), x_calib)
        try:
            outs = probe.predict_on_batch(batch)
        except (ValueError, TypeError) as exc:
            shapes = [tuple(t.shape) for t in keras.tree.flatten(model.inputs)]
            raise DataError(f"x_calib does not fit the model inputs {shapes}: {exc}", field="x_calib") from None
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, a in enumerate(outs):
            a = np.asarray(a)
            rows = importance.rows(a)
            sums[i] = sums[i] + criterion(a) * rows
            counts[i] += rows
    per_tensor = {key: s / c for key, s, c in zip(unique, sums, counts)}
    return [per_tensor[id(t)] for t in tensors]


def _calibration_batch(tensors: Iterable) -> int:
    """Samples per calibration batch: at most CALIBRATION_BATCH, and the probed activations within the budget."""
    per_sample = sum(4 * math.prod(d or 1 for d in t.shape[1:]) for t in tensors)
    return max(1, min(CALIBRATION_BATCH, CALIBRATION_BYTES // max(1, per_sample)))


def _group_scores(g: _Graph, grp: _Group, member_scores: dict[str, np.ndarray]) -> np.ndarray:
    """Sum over members of per-member normalized scores, per class (channels united by merges)."""
    pos = {int(r): i for i, r in enumerate(grp.classes)}
    total = np.zeros(len(grp.classes))
    for name in grp.members:
        s = importance.normalize(member_scores[name])
        for r, v in zip(g.root[g.producers[name].ids], s):
            i = pos.get(int(r))
            if i is not None:
                total[i] += v
    return total


def keep_count(units: int, keep_ratio: float, round_to: int = 1) -> int:
    """ceil(keep_ratio * units), at least 1, rounded up to a multiple of round_to, at most units."""
    k = max(1, math.ceil(keep_ratio * units - 1e-9))
    k = math.ceil(k / round_to) * round_to
    return min(k, units)


def _keep_layer(groups: list[_Group], keep_ratio: float, round_to: int) -> None:
    for grp in groups:
        grp.keep = keep_count(len(grp.classes), grp.keep_ratio, round_to)


def _keep_global(groups: list[_Group], keep_ratio: float, round_to: int) -> None:
    ranked = [grp for grp in groups if not grp.overridden]
    _keep_layer([grp for grp in groups if grp.overridden], keep_ratio, round_to)
    if not ranked:
        return
    pooled = np.concatenate([importance.normalize(grp.scores) for grp in ranked])
    owner = np.concatenate([np.full(len(grp.classes), i) for i, grp in enumerate(ranked)])
    total = max(1, math.ceil(keep_ratio * len(pooled) - 1e-9))
    chosen = owner[np.argsort(-pooled, kind="stable")[:total]]
    for i, grp in enumerate(ranked):
        n = len(grp.classes)
        k = max(int(np.sum(chosen == i)), min(max(1, round_to), n))
        grp.keep = min(math.ceil(k / round_to) * round_to, n)


SCOPES: dict[str, Callable[[list[_Group], float, int], None]] = {"layer": _keep_layer, "global": _keep_global}


# --------------------------------------------------------------------------- rebuild


def _layer_entries(config: dict) -> dict[str, dict]:
    return {entry["config"]["name"]: entry for entry in config["layers"]}


def _custom_objects(model) -> dict[str, type]:
    """Classes of non-Keras layers in the model (they are barriers) so that from_config finds them."""
    out: dict[str, type] = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        cls = type(layer)
        if not cls.__module__.startswith("keras."):
            out[cls.__name__] = cls
            out[keras.saving.get_registered_name(cls)] = cls
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
    return out


def _from_config(model, config: dict) -> keras.Model:
    with keras.saving.custom_object_scope(_custom_objects(model)):
        if isinstance(model, keras.Sequential):
            return keras.Sequential.from_config(config)
        return keras.Model.from_config(config)


def _keep_indices(g: _Graph, ids: np.ndarray, removed: set[int]) -> np.ndarray:
    roots = g.root[ids]
    return np.flatnonzero(~np.isin(roots, list(removed))) if removed else np.arange(len(ids))


def _signed_mean(activations: np.ndarray) -> np.ndarray:
    a = np.asarray(activations, dtype=np.float64)
    return a.reshape(-1, a.shape[-1]).mean(axis=0)


# not a ranking criterion: the per-channel mean a consumer reads, streamed like one (`_activation_scores`)
_SIGNED_MEAN = importance.Criterion("signed_mean", "activations", _signed_mean, "mean activation (signed)")


def _compensation(g: _Graph, removed: set[int], x_calib) -> dict[str, tuple[str, np.ndarray]]:
    """What the removed channels passed on, on average, to each Dense/Conv that reads them.

    A removed input channel c of a consumer took away kernel[..., c, :] * a_c from its outputs; its mean part,
    delta = sum over removed c of mean(a_c) * kernel[..., c, :] (summed over the kernel's spatial axes), goes back
    into the consumer's bias, or, for a consumer without bias followed directly by a BatchNormalization, into
    that BatchNorm's moving mean (moving_mean - delta). The means are measured on `x_calib` at the consumer's
    input. Channels that were nearly constant (a BatchNorm's beta through a ReLU, a bias) are then restored
    exactly, and fine-tuning starts close to the unpruned model instead of from a shifted one.
    """
    if not removed or x_calib is None:
        return {}
    gone = np.asarray(sorted(removed), dtype=np.int64)
    targets = []
    for name, handler in g.handlers.items():
        if type(handler) not in (_Dense, _Conv):  # SeparableConv: its depthwise part sits in between
            continue
        rows = np.flatnonzero(np.isin(g.root[g.in_maps[name][0]], gone))
        if not rows.size:
            continue
        node = g.node_of[name]
        if node.layer.use_bias:
            where = "bias"
        else:
            out = node.outputs[0]
            users = g.consumers.get(id(out), [])
            if (id(out) in g.output_ids or len(users) != 1
                    or not isinstance(g.handlers.get(users[0].layer.name), _BatchNorm)):
                continue  # nothing to fold the shift into
            where = users[0].layer.name
        targets.append((name, rows, where))
    if not targets:
        return {}
    means = _activation_scores(g.model, [g.node_of[name].inputs[0] for name, _, _ in targets], _SIGNED_MEAN, x_calib)
    shifts = {}
    for (name, rows, where), mean in zip(targets, means):
        kernel = g.handlers[name].kernel(g.node_of[name].layer).astype(np.float64)
        rowwise = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)  # (inputs, outputs)
        shifts[name] = (where, mean[rows] @ rowwise[rows])
    return shifts


def _shifted(name: str, weights: list[tuple[str, np.ndarray]],
             shifts: Mapping[str, tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """The layer's weights with the compensation shifts that land on it (its bias, or its moving mean)."""
    landing = [(consumer, delta) for consumer, (where, delta) in shifts.items()
               if (where == "bias" and consumer == name) or where == name]
    if not landing:
        return weights
    out = []
    for wname, w in weights:
        for consumer, delta in landing:
            if consumer == name and wname == "bias":
                w = (w + delta).astype(w.dtype)
            elif consumer != name and wname == "moving_mean":
                w = (w - delta).astype(w.dtype)
        out.append((wname, w))
    return out


def _materialize(g: _Graph, removed: set[int], *, zero_only: bool,
                 shifts: Mapping[str, tuple[str, np.ndarray]] | None = None) -> keras.Model:
    """Rebuild the model without the removed channel classes, or (zero_only) a copy with their inputs zeroed;
    both with the compensation `shifts` applied."""
    shifts = shifts or {}
    model = g.model
    config = model.get_config()
    entries = _layer_entries(config)
    plans: dict[str, tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]] = {}
    for name, handler in g.handlers.items():
        ins = g.in_maps[name]
        keep_in = [_keep_indices(g, m, removed) for m in ins]
        out_ids = g.out_maps[name][0]
        keep_out = _keep_indices(g, out_ids, removed)
        if all(len(k) == len(m) for k, m in zip(keep_in, ins)) and len(keep_out) == len(out_ids):
            continue
        removed_in = [np.setdiff1d(np.arange(len(m)), k) for k, m in zip(keep_in, ins)]
        plans[name] = (keep_in, keep_out, removed_in)
        if handler.producer and not zero_only and name in g.producers:
            handler.resize(entries[name]["config"], len(keep_out))
    for entry in entries.values():
        entry.pop("build_config", None)
        entry.pop("compile_config", None)
    new_model = _from_config(model, config)
    for layer in new_model.layers:
        old = model.get_layer(layer.name)
        if layer.name not in plans:
            layer.set_weights([w for _, w in _shifted(layer.name, _weights(old), shifts)])
            continue
        keep_in, keep_out, removed_in = plans[layer.name]
        handler = g.handlers[layer.name]
        weights = _shifted(layer.name, _weights(old), shifts)
        if zero_only:
            new = handler.zero_inputs(old, weights, removed_in) if handler.consumer else [w for _, w in weights]
        else:
            new = handler.slice(old, weights, keep_in, keep_out)
        layer.set_weights(new)
    return new_model


def _layers_by_class(g: _Graph) -> dict[int, list[str]]:
    """For every channel class, the traced layers whose inputs or outputs carry it (in graph order)."""
    index: dict[int, list[str]] = {}
    for name in g.handlers:
        maps = [m for m in (*g.in_maps[name], *g.out_maps[name]) if len(m)]
        if maps:
            for r in np.unique(g.root[np.concatenate(maps)]):
                index.setdefault(int(r), []).append(name)
    return index


def _dependents(g: _Graph, index: dict[int, list[str]], classes: np.ndarray, members: list[str]) -> list[str]:
    """Layers other than the members that are resliced with the group, in graph order."""
    names = {n for r in classes for n in index.get(int(r), [])} - set(members)
    return [n for n in g.handlers if n in names]


# --------------------------------------------------------------------------- public API


def structured_prune(model, *, criterion: str, keep_ratio: float, scope: str = "layer", round_to: int = 1,
                     selection: LayerSelection | None = None, x_calib=None,
                     overrides: Mapping[str, LayerOverride] | None = None) -> tuple[keras.Model, StructuredReport]:
    """Remove the least important units/filters and rebuild a genuinely smaller model of stock Keras layers.

    Returns the rebuilt (uncompiled) model and a report of every pruned group and every producer left alone.
    Data criteria ("mean_activation", "apoz") need `x_calib`: the calibration samples, used in full.
    """
    crit = importance.get_criterion(criterion)
    if not isinstance(keep_ratio, (int, float)) or not 0.0 < float(keep_ratio) <= 1.0:
        raise SpecError(f"keep_ratio must be within (0, 1], got {keep_ratio!r}", field="keep_ratio")
    if scope not in SCOPES:
        raise SpecError(f"unknown scope '{scope}'; allowed: {', '.join(sorted(SCOPES))}", field="scope")
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise SpecError(f"round_to must be an integer >= 1, got {round_to!r}", field="round_to")
    round_to = int(round_to)
    selection = selection or LayerSelection()
    overrides = {k: v if isinstance(v, LayerOverride) else LayerOverride.model_validate(v)
                 for k, v in (selection.overrides if overrides is None else overrides).items()}

    g = _Graph(model)
    _check_names(model, selection, overrides)
    groups, skipped = _groups(g)
    skipped.update({name: f"not pruned: it is a barrier: {why}" for name, why in g.blocked_producers.items()})
    chosen: list[_Group] = []
    for grp in groups:
        reasons = {n: _not_selected_reason(g.producers[n].layer, selection, overrides) for n in grp.members}
        blocked = {n: r for n, r in reasons.items() if r}
        if blocked:
            for n in grp.members:
                skipped[n] = (f"not pruned: {blocked[n]}" if n in blocked else
                              f"not pruned: coupled with {', '.join(sorted(blocked))} ({'; '.join(blocked.values())})")
            continue
        ratios = [overrides[n].keep_ratio for n in grp.members if n in overrides and overrides[n].keep_ratio]
        grp.overridden = bool(ratios)
        grp.keep_ratio = max(ratios) if ratios else float(keep_ratio)  # coupled members: the most conservative
        chosen.append(grp)

    member_scores = _member_scores(g, chosen, crit, x_calib) if chosen else {}
    for grp in chosen:
        grp.scores = _group_scores(g, grp, member_scores)
    SCOPES[scope](chosen, float(keep_ratio), round_to)

    removed: set[int] = set()
    report_groups = []
    by_class = _layers_by_class(g)
    for grp in chosen:
        order = np.argsort(-grp.scores, kind="stable")
        drop = {int(r) for r in grp.classes[order[grp.keep:]]}
        removed |= drop
        kept = {n: _keep_indices(g, g.producers[n].ids, drop).tolist() for n in grp.members}
        report_groups.append(PrunedGroup(
            layers=list(grp.members), units_before=grp.all_classes, units_after=grp.all_classes - len(drop),
            kept_indices=kept, dependents=_dependents(g, by_class, grp.classes, grp.members),
            keep_ratio=grp.keep_ratio,
        ))
    shifts = _compensation(g, removed, x_calib)
    new_model = _materialize(g, removed, zero_only=False, shifts=shifts)
    report = StructuredReport(
        criterion=crit.name, scope=scope, keep_ratio=float(keep_ratio), round_to=round_to, groups=report_groups,
        skipped=skipped, params_before=int(model.count_params()), params_after=int(new_model.count_params()),
        compensated=list(shifts), shifts=shifts,
    )
    return new_model, report


def masked_reference(model, report: StructuredReport) -> keras.Model:
    """A copy of `model` with the removed units zeroed where they are consumed (the rebuilt model's twin)."""
    g = _Graph(model)
    removed: set[int] = set()
    for grp in report.groups:
        for name, kept in grp.kept_indices.items():
            if name not in g.producers:
                raise SpecError(f"the report names layer '{name}', which is not a producer of model '{model.name}'",
                                field="report")
            ids = g.producers[name].ids
            drop = np.setdiff1d(np.arange(len(ids)), np.asarray(kept, dtype=np.int64))
            removed |= {int(r) for r in g.root[ids[drop]]}
    return _materialize(g, removed, zero_only=True, shifts=report.shifts)
