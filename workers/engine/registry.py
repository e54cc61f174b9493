"""What can be pruned: the prunable weights of a Keras 3 model, found through a registry keyed by layer class.

Public API (used by `pruning`, `regularizers` and `pipeline`)::

    prunable_weights(model, selection: LayerSelection | None = None) -> list[PrunableWeight]
    output_layer_paths(model) -> set[str]
    LAYER_REGISTRY: dict[type[keras.layers.Layer], tuple[WeightRole, ...]]

A `PrunableWeight` is one kernel-like variable of one layer: Dense / EinsumDense kernels, the kernels of
Conv1D/2D/3D and their Transpose variants, DepthwiseConv1D/2D kernels, both kernels of SeparableConv1D/2D and
Embedding tables. Biases, normalization parameters and every other variable are never prunable. The registry
records, per role, which axis holds the *input* features (N:M groups run along it) and which axis holds the
*units* (group lasso sums one norm per unit):

    ==========================  ==========================  ============  ==========
    layer                       kernel shape                input axis    unit axis
    ==========================  ==========================  ============  ==========
    Dense                       (in, out)                   0             -1
    EinsumDense                 from the equation           contracted    output
    Conv1D/2D/3D                (*k, in, out)               -2            -1
    Conv1D/2D/3DTranspose       (*k, out, in)               -1            -2
    DepthwiseConv1D/2D          (*k, channels, multiplier)  -2            -2 (channel)
    SeparableConv depthwise     (*k, channels, multiplier)  -2            -2 (channel)
    SeparableConv pointwise     (1.., in*mult, out)         -2            -1
    Embedding                   (vocab, dim)                0             -1
    ==========================  ==========================  ============  ==========

Layers are looked up along their class's MRO, so subclasses of these layers are prunable too. Nested models
(and wrapper layers such as TimeDistributed) are walked recursively; a weight's `path` is the layer name,
prefixed by the names of the enclosing models: "outer/inner". A layer shared by several call sites appears once.

Selection (`selection.LayerSelection`, plain values) follows the one rule of `selection.Selector`: `include` / `exclude`
entries match a layer's path, its name, its class name, or the name of an enclosing nested model (which selects
everything inside it); `overrides[name]` matches a path or a layer name, and `skip=True` removes the layer.
Entries that name no layer of the model are refused with a SpecError that lists the names available; a Keras
layer class name is accepted even when the model has no such layer (``exclude: ["Embedding"]`` is meaningful for
any model), but an `include` that ends up selecting nothing prunable is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import keras

from workers.engine.errors import SpecError
from workers.engine.selection import LayerSelection, Selector

L = keras.layers


@dataclass(frozen=True)
class WeightRole:
    """One prunable variable of a layer class: its role, the Keras variable name and its axes."""

    role: str  # "kernel" | "depthwise_kernel" | "pointwise_kernel" | "embeddings"
    variable_name: str  # the Keras variable's short name in this layer
    input_axis: int
    unit_axis: int


@dataclass(frozen=True)
class PrunableWeight:
    """A prunable variable of a model: where it lives, what it is and how its axes are laid out."""

    path: str  # layer name, prefixed by enclosing model names: "outer/inner"
    layer: keras.layers.Layer
    variable: keras.Variable
    layer_type: str  # class name of the layer
    role: str
    input_axis: int = 0  # axis of the input features (N:M groups run along it), negative = from the end
    unit_axis: int = -1  # axis of the output units (group lasso: one norm per unit)
    explicit: bool = False  # named in layers.include or given a per-layer target: never spared by global scope

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def name(self) -> str:
        """The layer's own name (the last component of `path`)."""
        return self.path.rsplit("/", 1)[-1]


_KERNEL = "kernel"
_CONV = (WeightRole("kernel", _KERNEL, input_axis=-2, unit_axis=-1),)
_CONV_T = (WeightRole("kernel", _KERNEL, input_axis=-1, unit_axis=-2),)
_DEPTHWISE = (WeightRole("depthwise_kernel", _KERNEL, input_axis=-2, unit_axis=-2),)
_SEPARABLE = (
    WeightRole("depthwise_kernel", "depthwise_kernel", input_axis=-2, unit_axis=-2),
    WeightRole("pointwise_kernel", "pointwise_kernel", input_axis=-2, unit_axis=-1),
)

LAYER_REGISTRY: dict[type, tuple[WeightRole, ...]] = {
    L.Dense: (WeightRole("kernel", _KERNEL, input_axis=0, unit_axis=-1),),
    L.EinsumDense: (WeightRole("kernel", _KERNEL, input_axis=0, unit_axis=-1),),  # axes refined per equation
    L.Conv1D: _CONV,
    L.Conv2D: _CONV,
    L.Conv3D: _CONV,
    L.Conv1DTranspose: _CONV_T,
    L.Conv2DTranspose: _CONV_T,
    L.Conv3DTranspose: _CONV_T,
    L.DepthwiseConv1D: _DEPTHWISE,
    L.DepthwiseConv2D: _DEPTHWISE,
    L.SeparableConv1D: _SEPARABLE,
    L.SeparableConv2D: _SEPARABLE,
    L.Embedding: (WeightRole("embeddings", "embeddings", input_axis=0, unit_axis=-1),),
}


def roles_for(layer) -> tuple[WeightRole, ...]:
    """The registered roles of `layer`'s class (looked up along the MRO); () when it is not prunable."""
    for cls in type(layer).__mro__:
        roles = LAYER_REGISTRY.get(cls)
        if roles is not None:
            return _einsum_roles(layer, roles) if cls is L.EinsumDense else roles
    return ()


def _einsum_roles(layer, roles: tuple[WeightRole, ...]) -> tuple[WeightRole, ...]:
    """EinsumDense: the input axis is the first contracted kernel axis, the unit axis the last output one."""
    m = re.fullmatch(r"\s*([\w.]+)\s*,\s*(\w+)\s*->\s*([\w.]+)\s*", str(getattr(layer, "equation", "")))
    if not m:
        return roles
    inp, ker, out = m.groups()
    contracted = [i for i, c in enumerate(ker) if c in inp and c not in out]
    produced = [i for i, c in enumerate(ker) if c in out]
    if not contracted or not produced:
        return roles
    n = len(ker)
    return (WeightRole("kernel", _KERNEL, input_axis=contracted[0] - n, unit_axis=produced[-1] - n),)


# --------------------------------------------------------------------------- walking the model


def _sublayers(layer) -> list:
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return [s for s in flatten(include_self=False, recursive=False)]


def walk_layers(model) -> Iterator[tuple[str, tuple[str, ...], keras.layers.Layer]]:
    """Yield (path, enclosing model/wrapper names, layer) for every layer below `model`, depth first, once each."""
    seen: set[int] = set()

    def visit(container, prefix: tuple[str, ...]):
        for layer in _sublayers(container):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            yield "/".join((*prefix, layer.name)), prefix, layer
            if not roles_for(layer):
                yield from visit(layer, (*prefix, layer.name))

    yield from visit(model, ())


def _layer_variable(layer, name: str):
    for v in layer.weights:
        if v.name == name or v.path.rsplit("/", 1)[-1] == name:
            return v
    return None


def _is_float(variable) -> bool:
    return "float" in str(variable.dtype)


def output_layer_paths(model) -> set[str]:
    """Paths of the prunable layers that produce a model output, looking back through layers without prunable
    weights that take a single input (Activation, Softmax, Dropout, Reshape, BatchNormalization, ...)."""
    paths: dict[int, str] = {id(layer): path for path, _, layer in walk_layers(model)}
    found: set[str] = set()

    def producer(tensor, depth: int = 0):
        history = getattr(tensor, "_keras_history", None)
        if history is None or depth > 64:
            return
        op, node_index, tensor_index = history.operation, history.node_index, history.tensor_index
        if isinstance(op, keras.Model) and op is not model:
            outs = list(getattr(op, "outputs", None) or [])
            if tensor_index < len(outs):
                producer(outs[tensor_index], depth + 1)
            return
        if roles_for(op):
            if id(op) in paths:
                found.add(paths[id(op)])
            return
        nodes = getattr(op, "_inbound_nodes", None) or []
        if node_index >= len(nodes):
            return
        inputs = list(nodes[node_index].input_tensors)
        if len(inputs) == 1:
            producer(inputs[0], depth + 1)

    try:
        outputs = list(model.outputs or [])
    except (AttributeError, ValueError):  # a subclassed model that was never called symbolically
        outputs = []
    for t in outputs:
        producer(t)
    return found


# --------------------------------------------------------------------------- prunable weights


def prunable_weights(model, selection: LayerSelection | None = None) -> list[PrunableWeight]:
    """Every prunable weight of `model` (nested models included) that `selection` keeps, in layer order.

    Raises SpecError when a selection entry names nothing in the model, or when `include` selects no
    prunable weight.
    """
    selector = Selector.of(selection)
    layers = list(walk_layers(model))
    selector.check(model.name, layers)
    found: list[PrunableWeight] = []
    seen: set[int] = set()
    for path, prefix, layer in layers:
        roles = roles_for(layer)
        if not roles or selector.reason(path, prefix, layer) is not None:
            continue
        override = selector.override(path, layer.name)
        explicit = selector.named(path, layer.name) or (
            override is not None and (override.target_sparsity is not None or override.threshold is not None)
        )
        for role in roles:
            variable = _layer_variable(layer, role.variable_name)
            if variable is None or id(variable) in seen or not _is_float(variable):
                continue  # unbuilt, shared with another layer, or quantized (integer) storage
            seen.add(id(variable))
            found.append(
                PrunableWeight(
                    path=path,
                    layer=layer,
                    variable=variable,
                    layer_type=type(layer).__name__,
                    role=role.role,
                    input_axis=role.input_axis,
                    unit_axis=role.unit_axis,
                    explicit=explicit,
                )
            )
    if selector.include is not None and not found:
        prunable = sorted({p for p, _, layer in layers if roles_for(layer)})
        raise SpecError(
            f"layers.include {sorted(selector.include)} selects no prunable layer of model "
            f"'{model.name}'; prunable layers: {', '.join(prunable) or 'none'}",
            field="layers.include",
        )
    return found
