"""Rebuild a smaller model, and fold what the removed channels passed on back into their consumers.

Rebuild. New layer configs (units/filters) -> `from_config` (Sequential stays Sequential) -> weights sliced by
the same handlers that traced the channels. Layer names are kept and no custom object is introduced: a model of
stock layers stays one, so `.keras` save / `load_model` round-trips without custom_objects. With `zero_only`,
the same walk builds the masked reference instead: a copy of the original whose consumers (Dense/Conv kernels,
SeparableConv pointwise kernels) have the input rows of removed channels set to zero. Its outputs equal the
rebuilt model's to float tolerance, which is what the tests check.

Compensation (`compensation`): see its docstring.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from workers.engine import importance
from workers.engine.structured.graph import Graph, keep_indices
from workers.engine.structured.handlers import BatchNormHandler, ConvHandler, DenseHandler, layer_weights
from workers.engine.structured.scoring import activation_scores


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


def _signed_mean(activations: np.ndarray) -> np.ndarray:
    a = np.asarray(activations, dtype=np.float64)
    return a.reshape(-1, a.shape[-1]).mean(axis=0)


# not a ranking criterion: the per-channel mean a consumer reads, streamed like one (`activation_scores`)
_SIGNED_MEAN = importance.Criterion("signed_mean", "activations", _signed_mean, "mean activation (signed)")


def compensation(g: Graph, removed: set[int], x_calib) -> dict[str, tuple[str, np.ndarray]]:
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
        if type(handler) not in (DenseHandler, ConvHandler):  # SeparableConv: its depthwise part sits in between
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
            if (
                id(out) in g.output_ids
                or len(users) != 1
                or not isinstance(g.handlers.get(users[0].layer.name), BatchNormHandler)
            ):
                continue  # nothing to fold the shift into
            where = users[0].layer.name
        targets.append((name, rows, where))
    if not targets:
        return {}
    means = activation_scores(g.model, [g.node_of[name].inputs[0] for name, _, _ in targets], _SIGNED_MEAN, x_calib)
    shifts = {}
    for (name, rows, where), mean in zip(targets, means):
        kernel = g.handlers[name].kernel(g.node_of[name].layer).astype(np.float64)
        rowwise = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)  # (inputs, outputs)
        shifts[name] = (where, mean[rows] @ rowwise[rows])
    return shifts


def _shifted(
    name: str, weights: list[tuple[str, np.ndarray]], shifts: Mapping[str, tuple[str, np.ndarray]]
) -> list[tuple[str, np.ndarray]]:
    """The layer's weights with the compensation shifts that land on it (its bias, or its moving mean)."""
    landing = [
        (consumer, delta)
        for consumer, (where, delta) in shifts.items()
        if (where == "bias" and consumer == name) or where == name
    ]
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


def rebuild(
    g: Graph, removed: set[int], *, zero_only: bool, shifts: Mapping[str, tuple[str, np.ndarray]] | None = None
) -> keras.Model:
    """Rebuild the model without the removed channel classes, or (zero_only) a copy with their inputs zeroed;
    both with the compensation `shifts` applied."""
    shifts = shifts or {}
    model = g.model
    config = model.get_config()
    entries = _layer_entries(config)
    plans: dict[str, tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]] = {}
    for name, handler in g.handlers.items():
        ins = g.in_maps[name]
        keep_in = [keep_indices(g, m, removed) for m in ins]
        out_ids = g.out_maps[name][0]
        keep_out = keep_indices(g, out_ids, removed)
        if all(len(k) == len(m) for k, m in zip(keep_in, ins)) and len(keep_out) == len(out_ids):
            continue
        removed_in = [np.setdiff1d(np.arange(len(m)), k) for k, m in zip(keep_in, ins)]
        plans[name] = (keep_in, keep_out, removed_in)
        if not zero_only and ((handler.producer and name in g.producers) or handler.resized):
            handler.resize(entries[name]["config"], len(keep_out))
    for entry in entries.values():
        entry.pop("build_config", None)
        entry.pop("compile_config", None)
    new_model = _from_config(model, config)
    for layer in new_model.layers:
        old = model.get_layer(layer.name)
        if layer.name not in plans:
            layer.set_weights([w for _, w in _shifted(layer.name, layer_weights(old), shifts)])
            continue
        keep_in, keep_out, removed_in = plans[layer.name]
        handler = g.handlers[layer.name]
        weights = _shifted(layer.name, layer_weights(old), shifts)
        if zero_only:
            new = handler.zero_inputs(old, weights, removed_in) if handler.consumer else [w for _, w in weights]
        else:
            new = handler.slice(old, weights, keep_in, keep_out)
        layer.set_weights(new)
    return new_model
