"""One handler per layer type: how channels move through the layer, and how its weights are sliced.

A handler answers, for one stock Keras layer class:

- `barrier_reason`: why channels cannot be traced through this layer (data_format, quantization, an activation
  that mixes units, a grouped convolution, ...), or None;
- `propagate`: the channel maps of its outputs from those of its inputs. Prunable producers (Dense, Conv1D/2D/3D,
  SeparableConv1D/2D) create fresh ids; BatchNormalization and pooling pass them on; Flatten repeats them per
  position (row = spatial * C + c); DepthwiseConv repeats each m times (c*m .. c*m+m-1); Concatenate appends them
  at their offsets; Add/Subtract/Multiply/Average/Maximum/Minimum *unite* the ids of their inputs position by
  position; Reshape only when it adds or drops size-1 axes (squeeze-excite; `TRACE_UNIT_RESHAPE`, on; off: a
  barrier);
- `slice` / `zero_inputs`: the layer's weights without the removed channels (the rebuild), or with the input rows
  of removed channels set to zero (the masked reference);
- `resize` (producers): the new unit / filter count in the layer config; `kernel`: what weight criteria score.

Only stock layers have handlers (`handler_for`): a subclass may override `call`, so it is a barrier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from workers.engine.names import INFERENCE_IDENTITY_LAYERS

if TYPE_CHECKING:
    from workers.engine.structured.graph import Graph

# Activations that act on each value alone: a unit's output does not depend on its neighbours, so removing
# some units leaves the others unchanged. Anything else (softmax, glu, custom functions) fixes the outputs.
POINTWISE_ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "swish",
        "mish",
        "sigmoid",
        "hard_sigmoid",
        "log_sigmoid",
        "tanh",
        "hard_tanh",
        "tanh_shrink",
        "softplus",
        "softsign",
        "exponential",
        "hard_silu",
        "hard_swish",
        "sparse_plus",
        "squareplus",
        "soft_shrink",
        "hard_shrink",
    }
)


def layer_weights(layer) -> list[tuple[str, np.ndarray]]:
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


class Handler:
    """How one layer type moves channels. Default: a channelwise pass-through without weights to slice."""

    producer = False  # creates fresh output channels (units / filters) that can be pruned
    consumer = False  # mixes input channels through a kernel whose input rows can be sliced / zeroed
    pointwise = False  # output value depends on the same channel at the same position only (activation tracing)
    resized = False  # not a producer, but its config names the channel count (`resize` gets the kept count)

    def barrier_reason(self, layer, in_shapes: list[tuple], in_maps: list[np.ndarray]) -> str | None:
        return _data_format_reason(layer)

    def fixed_output_reason(self, layer) -> str | None:
        return None

    def propagate(self, g: Graph, layer, in_maps: list[np.ndarray], in_shapes, out_shapes) -> list[np.ndarray]:
        return [in_maps[0]]

    def slice(self, layer, weights, keep_in: list[np.ndarray], keep_out: np.ndarray) -> list[np.ndarray]:
        return [w for _, w in weights]

    def zero_inputs(self, layer, weights, removed_in: list[np.ndarray]) -> list[np.ndarray]:
        return [w for _, w in weights]

    def resize(self, config: dict, units: int) -> None:
        raise NotImplementedError

    def kernel(self, layer) -> np.ndarray:
        raise NotImplementedError


class PassThrough(Handler):
    def __init__(self, pointwise: bool = False):
        self.pointwise = pointwise


class ActivationHandler(Handler):
    pointwise = True

    def barrier_reason(self, layer, in_shapes, in_maps):
        name = _activation_name(layer)
        if name not in POINTWISE_ACTIVATIONS:
            return f"activation {name!r} mixes channels"
        return None


class BatchNormHandler(Handler):
    pointwise = True

    def barrier_reason(self, layer, in_shapes, in_maps):
        rank = len(in_shapes[0])
        if layer.axis not in (-1, rank - 1):
            return f"axis={layer.axis} is not the channel (last) axis"
        return None

    def slice(self, layer, weights, keep_in, keep_out):
        return [np.take(w, keep_in[0], axis=0) for _, w in weights]


class LayerNormHandler(Handler):
    """Only when it normalizes over non-channel axes: then each channel is normalized on its own."""

    def barrier_reason(self, layer, in_shapes, in_maps):
        rank = len(in_shapes[0])
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if any(a % rank == rank - 1 for a in axes):
            return "it normalizes over the channel axis (removing channels would change the statistics)"
        return None


class MergeHandler(Handler):
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


class ConcatenateHandler(MergeHandler):
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


# squeeze-excite's Reshape((1, 1, C)) traced (on; bench.zoo_explore flag `noreshape` turns it off): see ReshapeHandler
TRACE_UNIT_RESHAPE = True


class ReshapeHandler(Handler):
    """Only a reshape that adds or drops size-1 axes in front of the channels (squeeze-excite's (C,) -> (1, 1, C)):
    channel c stays channel c, and the target shape's last entry follows the kept count. Any other reshape, or every
    Reshape with `TRACE_UNIT_RESHAPE` off, is a barrier. Traced, it opens EfficientNet's expanded channels to
    pruning: with gradual removal (the structured step's default for units behind such a gate,
    `gradual.default_removal`) EfficientNetB0 at keep 0.75 reaches MACs 0.65x within 4 points; a one-shot cut of the
    same channels then 2 fine-tune epochs lost 24 points (docs/BENCHMARKS.md part 5b)."""

    resized = True

    def barrier_reason(self, layer, in_shapes, in_maps):
        if not TRACE_UNIT_RESHAPE:
            return "not traced (Reshape)"
        target = tuple(layer.target_shape)
        inner = tuple(in_shapes[0][1:])
        if not target or not inner or target[-1] != inner[-1] or target[-1] is None:
            return "it moves channels to other axes"
        if any(d != 1 for d in (*target[:-1], *inner[:-1])):
            return "it moves channels to other axes"
        return None

    def resize(self, config, units):
        config["target_shape"] = [*list(config["target_shape"])[:-1], int(units)]


class FlattenHandler(Handler):
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


class DenseHandler(Handler):
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
        return dict(layer_weights(layer))[self.kernel_name]


class ConvHandler(DenseHandler):
    def barrier_reason(self, layer, in_shapes, in_maps):
        if getattr(layer, "groups", 1) != 1:
            return f"grouped convolution (groups={layer.groups})"
        return super().barrier_reason(layer, in_shapes, in_maps)

    def resize(self, config, units):
        config["filters"] = int(units)


class DepthwiseHandler(Handler):
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


class SeparableHandler(ConvHandler):
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


def _handlers() -> dict[str, Handler]:
    table: dict[str, Handler] = {
        "Dense": DenseHandler(),
        "BatchNormalization": BatchNormHandler(),
        "LayerNormalization": LayerNormHandler(),
        "Flatten": FlattenHandler(),
        "Concatenate": ConcatenateHandler(),
        "Activation": ActivationHandler(),
        "Reshape": ReshapeHandler(),
    }
    for name in ("Conv1D", "Conv2D", "Conv3D"):
        table[name] = ConvHandler()
    for name in ("DepthwiseConv1D", "DepthwiseConv2D"):
        table[name] = DepthwiseHandler()
    for name in ("SeparableConv1D", "SeparableConv2D"):
        table[name] = SeparableHandler()
    for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
        table[name] = MergeHandler()
    for name in ("ReLU", "LeakyReLU", "ELU", *INFERENCE_IDENTITY_LAYERS, "Identity"):
        table[name] = PassThrough(pointwise=True)
    for name in (
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
    ):
        table[name] = PassThrough()
    return table


HANDLERS: dict[str, Handler] = _handlers()


def handler_for(layer) -> Handler | None:
    """The handler for a stock Keras layer, None for anything else (subclasses included: they may override call)."""
    name = type(layer).__name__
    if getattr(keras.layers, name, None) is not type(layer):
        return None
    return HANDLERS.get(name)
