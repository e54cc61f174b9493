"""Trace channels through a model graph: one pass from inputs to outputs, channel maps, producers and barriers.

Every tensor gets a *channel map*: for each entry of its last axis, the id of the channel it carries. The
handlers (`handlers.py`) say how ids move through each layer; merges unite ids in a union-find (`Channels`), so
channels that must be removed together end up in one *class*.

Barriers. A layer without a handler (Reshape, Permute, Softmax, LayerNormalization over the channel axis (over
other axes it passes channels through), RNNs, custom layers, raw keras.ops, layers called more than once, nested
models, channels_first layers, ...) marks every channel reaching it as fixed, and so does every model output: a
fixed channel is never removed, so no producer is ever pruned in a way we cannot reproduce exactly. Nested models
are treated as barriers (not flattened): their insides stay untouched and the producers feeding them keep all
their units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from workers.engine.errors import ModelRejected
from workers.engine.structured.handlers import BatchNormHandler, Handler, handler_for


class Channels:
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


@dataclass
class Node:
    layer: Any
    inputs: list  # KerasTensors
    outputs: list


@dataclass
class Producer:
    layer: Any
    handler: Handler
    ids: np.ndarray
    output: Any = None  # KerasTensor


class Graph:
    """One pass over the model graph: channel maps of every tensor, producers, couplings and barriers."""

    def __init__(self, model):
        self.model = model
        self.channels = Channels()
        self.nodes = _topological_nodes(model)
        self.maps: dict[int, np.ndarray] = {}
        self.in_maps: dict[str, list[np.ndarray]] = {}
        self.out_maps: dict[str, list[np.ndarray]] = {}
        self.handlers: dict[str, Handler] = {}
        self.producers: dict[str, Producer] = {}
        self.barriers: dict[str, str] = {}  # layer (or op) name -> why channels cannot be traced through it
        self.blocked_producers: dict[str, str] = {}  # prunable layer types that are barriers here
        self.consumers: dict[int, list[Node]] = {}
        calls: dict[int, int] = {}
        for node in self.nodes:
            calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
            for t in node.inputs:
                self.consumers.setdefault(id(t), []).append(node)
        self.node_of: dict[str, Node] = {}
        for node in self.nodes:
            self.node_of[node.layer.name] = node
            self._visit(node, calls[id(node.layer)])
        for t in keras.tree.flatten(model.outputs):
            where = t._keras_history.operation.name
            self.channels.fix(self.maps[id(t)], f"it reaches the model output of '{where}'")
        self.root = self.channels.roots()
        self.output_ids = {id(t) for t in keras.tree.flatten(model.outputs)}

    def new_producer(self, layer, handler: Handler, units: int) -> np.ndarray:
        ids = self.channels.new(int(units))
        self.producers[layer.name] = Producer(layer, handler, ids)
        reason = handler.fixed_output_reason(layer)
        if reason:
            self.channels.fix(ids, reason)
        return ids

    def _visit(self, node: Node, calls: int) -> None:
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

    def _pointwise_chain(self, producer: Producer) -> list:
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

    def activation_tensor(self, producer: Producer):
        """The producer's output followed through pointwise layers (BatchNorm, activations, dropout)."""
        chain = self._pointwise_chain(producer)
        return chain[-1].outputs[0] if chain else producer.output

    def normalization_scale(self, producer: Producer) -> np.ndarray | None:
        """|gamma| / sqrt(moving_variance + epsilon) per unit of the BatchNormalization(s) in the producer's
        pointwise chain, or None without one. A BatchNorm divides out the scale of the kernel before it: what a
        unit passes on is its kernel times this factor, so weight criteria multiply by it."""
        scale = None
        for node in self._pointwise_chain(producer):
            layer = node.layer
            if not isinstance(self.handlers.get(layer.name), BatchNormHandler):
                continue
            factor = 1.0 / np.sqrt(np.asarray(layer.moving_variance, dtype=np.float64) + float(layer.epsilon))
            if getattr(layer, "scale", False) and getattr(layer, "gamma", None) is not None:
                factor = factor * np.abs(np.asarray(layer.gamma, dtype=np.float64))
            scale = factor if scale is None else scale * factor
        return scale


def _topological_nodes(model) -> list[Node]:
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
    return [Node(n.operation, list(n.input_tensors), list(n.output_tensors)) for n in order]


def keep_indices(g: Graph, ids: np.ndarray, removed: set[int]) -> np.ndarray:
    """Positions in `ids` whose channel class is not in `removed`."""
    roots = g.root[ids]
    return np.flatnonzero(~np.isin(roots, list(removed))) if removed else np.arange(len(ids))
