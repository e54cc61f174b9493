"""Count what a model holds and costs: parameters and zeros, and multiply-accumulates per sample.

Public API::

    param_stats(model) -> dict
    macs(model) -> dict
    MAC_RULES: dict[layer class, rule]     # which kernels a layer applies, and at how many positions

Conventions
-----------
* Parameters are the elements of every model variable (trainable and not: BatchNormalization statistics count),
  each variable once even when a layer is shared. `sparsity` is the fraction of zeros in the *prunable kernels*
  (`registry.prunable_weights`: Dense/Conv/Depthwise/Separable/Embedding kernels), the number pruning moves;
  `overall_sparsity` is the fraction of zeros among all parameters.
* MACs are counted per sample (batch size 1) for every call of a layer (a layer shared twice counts twice; a
  nested model called twice counts twice), from the layer's symbolic output shapes: a kernel applied at P
  positions costs ``P * kernel.size`` MACs, where P is the product of the output's spatial / sequence
  dimensions (the *input's* for transposed convolutions, whose kernel is applied once per input position).
  That covers Dense (on any rank), Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D and both kernels of
  SeparableConv1D/2D. `effective_macs` uses the number of non-zero kernel weights instead of ``kernel.size``:
  what a sparse kernel would cost. Bias additions, activations, normalization and pooling are not counted.
  FLOPs = 2 * MACs. A layer whose spatial size is unknown (None) is listed in `unknown` and left out of totals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import keras
import numpy as np

from workers.engine.registry import prunable_weights, walk_layers

__all__ = ["MAC_RULES", "macs", "param_stats"]

L = keras.layers


# --------------------------------------------------------------------------- parameters


def _count(values: np.ndarray) -> tuple[int, int]:
    return int(values.size), int(np.count_nonzero(values))


def param_stats(model: keras.Model) -> dict:
    """Totals and zeros of every variable, per leaf layer (nested models included, paths 'outer/inner')."""
    layers: dict[str, dict] = {}
    seen: set[int] = set()
    total = nonzero = trainable = 0
    for path, _prefix, layer in walk_layers(model):
        if isinstance(layer, keras.Model):
            continue  # its layers are walked with their own paths
        own = [v for v in layer.weights if id(v) not in seen]
        if not own:
            continue
        n = nz = 0
        for v in own:
            seen.add(id(v))
            size, count = _count(np.asarray(v.numpy()))
            n, nz = n + size, nz + count
            if v.trainable:
                trainable += size
        total, nonzero = total + n, nonzero + nz
        layers[path] = {
            "class": type(layer).__name__,
            "params": n,
            "nonzero": nz,
            "sparsity": (n - nz) / n if n else 0.0,
        }
    k_total = k_nonzero = 0
    for w in prunable_weights(model):
        size, count = _count(np.asarray(w.variable.numpy()))
        k_total, k_nonzero = k_total + size, k_nonzero + count
    return {
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
        "nonzero": nonzero,
        "zeros": total - nonzero,
        "overall_sparsity": (total - nonzero) / total if total else 0.0,
        "prunable": {"total": k_total, "nonzero": k_nonzero},
        "sparsity": (k_total - k_nonzero) / k_total if k_total else 0.0,
        "layers": layers,
    }


# --------------------------------------------------------------------------- MACs

Shape = tuple
# A rule returns [(positions, kernel variable)] for one call of a layer, given its input and output shapes.
MacRule = Callable[[keras.layers.Layer, Shape, Shape], list]


def _spatial(layer, shape: Shape) -> Shape:
    """The dimensions a kernel slides over (all but batch and channel axes)."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return tuple(shape[2:])
    return tuple(shape[1:-1])


def _at_output(*names: str) -> MacRule:
    def rule(layer, in_shape, out_shape):
        return [(_spatial(layer, out_shape), getattr(layer, n)) for n in names]

    return rule


def _at_input(*names: str) -> MacRule:
    def rule(layer, in_shape, out_shape):
        return [(_spatial(layer, in_shape), getattr(layer, n)) for n in names]

    return rule


def _dense(layer, in_shape, out_shape):
    return [(tuple(out_shape[1:-1]), layer.kernel)]


MAC_RULES: dict[type, MacRule] = {
    L.Dense: _dense,
    L.Conv1D: _at_output("kernel"),
    L.Conv2D: _at_output("kernel"),
    L.Conv3D: _at_output("kernel"),
    L.Conv1DTranspose: _at_input("kernel"),
    L.Conv2DTranspose: _at_input("kernel"),
    L.Conv3DTranspose: _at_input("kernel"),
    L.DepthwiseConv1D: _at_output("kernel"),
    L.DepthwiseConv2D: _at_output("kernel"),
    L.SeparableConv1D: _at_output("depthwise_kernel", "pointwise_kernel"),
    L.SeparableConv2D: _at_output("depthwise_kernel", "pointwise_kernel"),
}


def _rule_for(layer) -> MacRule | None:
    for cls in type(layer).__mro__:
        rule = MAC_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def _graph(model: keras.Model):
    """The functional graph of a model (a Sequential keeps its graph in `_functional`)."""
    functional = getattr(model, "_functional", None)
    return model if functional is None else functional


def _calls(model: keras.Model) -> Iterator[tuple[keras.layers.Layer, list]]:
    """(layer, [nodes]) for each operation of `model`'s graph: the calls of that layer inside this model."""
    graph = _graph(model)
    keys = getattr(graph, "_nodes", None)
    for op in getattr(graph, "operations", None) or model.layers:
        if isinstance(op, L.InputLayer):
            continue
        nodes = list(getattr(op, "_inbound_nodes", None) or [])
        if keys is not None:
            in_graph = [n for i, n in enumerate(nodes) if f"{id(op)}_ib-{i}" in keys]  # keras' node key
            nodes = in_graph or nodes[:1]
        yield op, nodes


def _known(shape) -> bool:
    return all(d is not None for d in shape)


def _macs_into(model: keras.Model, prefix: str, times: int, out: dict, unknown: list) -> None:
    for layer, nodes in _calls(model):
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            _macs_into(layer, f"{path}/", times * max(1, len(nodes)), out, unknown)
            continue
        rule = _rule_for(layer)
        if rule is None:
            continue
        dense = effective = 0
        known = True
        for node in nodes:
            in_shape = tuple(node.input_tensors[0].shape) if node.input_tensors else ()
            out_shape = tuple(node.outputs[0].shape)
            for positions, kernel in rule(layer, in_shape, out_shape):
                if not _known(positions):
                    known = False
                    continue
                p = math.prod(positions)
                size = math.prod(kernel.shape)
                dense += p * size
                effective += p * int(np.count_nonzero(np.asarray(kernel.numpy())))
        if not known:
            unknown.append(path)
            continue
        entry = out.setdefault(path, {"class": type(layer).__name__, "calls": 0, "macs": 0, "effective_macs": 0})
        entry["calls"] += len(nodes) * times
        entry["macs"] += dense * times
        entry["effective_macs"] += effective * times


def macs(model: keras.Model) -> dict:
    """Dense and effective (zero-skipping) MACs and FLOPs per sample, per layer path and in total."""
    layers: dict[str, dict] = {}
    unknown: list[str] = []
    _macs_into(model, "", 1, layers, unknown)
    for entry in layers.values():
        entry["flops"] = 2 * entry["macs"]
        entry["effective_flops"] = 2 * entry["effective_macs"]
    total = sum(e["macs"] for e in layers.values())
    effective = sum(e["effective_macs"] for e in layers.values())
    return {
        "macs": total,
        "flops": 2 * total,
        "effective_macs": effective,
        "effective_flops": 2 * effective,
        "layers": layers,
        "unknown": unknown,
    }
