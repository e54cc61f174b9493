"""Which layers a step targets: the one layer selector of unstructured pruning, regularization and structured pruning.

Public API (used by `registry`, `pruning` and `structured`)::

    LayerSelection(include=None, exclude=(), overrides={})   which layers, as plain values (the facade builds it)
    LayerOverride(target_sparsity=None, threshold=None, keep_ratio=None, skip=False)   one layer's own settings
    selector = Selector.of(selection, overrides=None)   from a LayerSelection (or None: every layer)
    selector.check(model_name, layers)                   SpecError unless every entry names something in the model
    selector.reason(path, prefix, layer) -> str | None   why the layer is left out, None when it is selected
    selector.override(path, name=None)                   the per-layer override of a layer (path first, then name)
    selector.refuse_nested(model_name, layers, why=..., uses=...)   a step that acts on the top level only
    override_for(overrides, path, name=None)             the same lookup on a plain mapping

`layers` are (path, enclosing names, layer) as `registry.walk_layers` yields them; a layer inside the nested model
"outer" has the path "outer/inner" and the enclosing names ("outer",).

The rule, the same for every step:

- `include` / `exclude` entries match a layer's path, its name, its class name, or the name of an enclosing nested
  model or wrapper (which selects everything inside it). A layer is left out when `include` is given and matches
  none of its keys ("not in layers.include"), when `exclude` matches one ("in layers.exclude"), or when its override
  says `skip` ("layers.overrides skip=true"), checked in that order.
- `overrides[key]` matches a layer's path first, then its name.
- Every entry must name something: a layer's path or name, the class of a layer of the model, or any Keras layer
  class (``exclude: ["Embedding"]`` is meaningful for any model). Otherwise a SpecError names the entries and lists
  the available names; its field is `layers.include`, `layers.exclude` or `layers.overrides.<first unknown key>`.
- Nested paths: a step that can only act on the top level of the model (structured pruning treats nested models
  as barriers) calls `refuse_nested`. An entry that asks it to act below the top level (an `include` entry naming
  a nested layer or a nested model, an override under a nested path with a setting the step uses) is refused with
  a SpecError naming the layer; entries that only leave layers alone (`exclude`, `skip`) are accepted, since they
  are honoured anyway.

Plain values only: the selection and its overrides are frozen dataclasses of this module (`config.layer_selection`
builds them from the job spec). `LayerOverride.of` also takes a mapping ({"keep_ratio": 0.5}) or any object with
the four attributes, so an allocation's computed overrides merge with the user's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import keras

from workers.engine.errors import SpecError

LayerEntry = tuple[str, tuple[str, ...], Any]  # (path, enclosing names, layer)


def _check_range(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    if value is None:
        return
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (low < value if low_open else low <= value)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        bounds = f"{low:g} {'<' if low_open else '<='} {name} {'<' if high_open else '<='} {high:g}"
        raise SpecError(f"layer override {name} must satisfy {bounds}, got {value!r}", field=name)


@dataclass(frozen=True)
class LayerOverride:
    """One layer's own settings: a prune target or threshold, a structured keep ratio, or `skip` (left alone)."""

    target_sparsity: float | None = None
    threshold: float | None = None
    keep_ratio: float | None = None
    skip: bool = False

    def __post_init__(self):
        _check_range("target_sparsity", self.target_sparsity, 0.0, 1.0, high_open=True)
        _check_range("threshold", self.threshold, 0.0, float("inf"))
        _check_range("keep_ratio", self.keep_ratio, 0.0, 1.0, low_open=True)
        if not isinstance(self.skip, bool):
            raise SpecError(f"layer override skip must be true or false, got {self.skip!r}", field="skip")

    @classmethod
    def of(cls, value) -> LayerOverride:
        """A LayerOverride from itself, a mapping of its fields, or an object with its four attributes."""
        if isinstance(value, cls):
            return value
        names = [f.name for f in fields(cls)]
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise SpecError(
                    f"layer override has unknown field(s) {unknown}; allowed: {', '.join(names)}", field=unknown[0]
                )
            return cls(**value)
        return cls(**{n: getattr(value, n) for n in names if hasattr(value, n)})


def _overrides(values: Mapping[str, Any] | None) -> dict[str, LayerOverride]:
    return {str(k): LayerOverride.of(v) for k, v in (values or {}).items()}


@dataclass(frozen=True)
class LayerSelection:
    """Which layers a step may act on: `include` (None: every layer), `exclude`, and per-layer `overrides` by
    path or name. Sequences become tuples and override values LayerOverrides (see `LayerOverride.of`)."""

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    overrides: Mapping[str, LayerOverride] = field(default_factory=dict)

    def __post_init__(self):
        if self.include is not None:
            object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))
        object.__setattr__(self, "overrides", _overrides(self.overrides))


def override_for(overrides: Mapping[str, Any], path: str, name: str | None = None) -> Any | None:
    """The override of the layer at `path`: by path first, then by name (default: the path's last component)."""
    o = overrides.get(path)
    return o if o is not None else overrides.get(name if name is not None else path.rsplit("/", 1)[-1])


def is_keras_layer_class(name: str) -> bool:
    cls = getattr(keras.layers, name, None)
    return isinstance(cls, type) and issubclass(cls, keras.layers.Layer)


def layer_keys(path: str, prefix: tuple[str, ...], layer) -> set[str]:
    """What an include / exclude entry may name to select the layer."""
    return {path, layer.name, type(layer).__name__, *prefix}


@dataclass(frozen=True)
class Selector:
    include: frozenset[str] | None = None  # None: every layer
    exclude: frozenset[str] = frozenset()
    overrides: Mapping[str, LayerOverride] = field(default_factory=dict)

    @classmethod
    def of(cls, selection: LayerSelection | None = None, overrides: Mapping[str, Any] | None = None) -> Selector:
        """From a LayerSelection, or None (every layer); `overrides`, when given, replaces the selection's (its
        values go through `LayerOverride.of`)."""
        include = selection.include if selection is not None else None
        if overrides is None:
            overrides = selection.overrides if selection is not None else {}
        return cls(
            include=frozenset(include) if include is not None else None,
            exclude=frozenset(selection.exclude if selection is not None else ()),
            overrides=_overrides(overrides),
        )

    def override(self, path: str, name: str | None = None) -> LayerOverride | None:
        return override_for(self.overrides, path, name)

    def reason(self, path: str, prefix: tuple[str, ...], layer) -> str | None:
        """Why the layer is left out, or None when it is selected."""
        keys = layer_keys(path, prefix, layer)
        if self.include is not None and not keys & self.include:
            return "not in layers.include"
        if keys & self.exclude:
            return "in layers.exclude"
        o = self.override(path, layer.name)
        if o is not None and o.skip:
            return "layers.overrides skip=true"
        return None

    def named(self, path: str, name: str) -> bool:
        """Named in `include` by its path or name (not only through its class or an enclosing model)."""
        return bool(self.include and {path, name} & self.include)

    def check(self, model_name: str, layers: Sequence[LayerEntry]) -> None:
        """SpecError unless every include / exclude entry names a layer (path or name), a layer class of the model
        or a Keras layer class, and every override key a layer's path or name."""
        names = {n for path, _, layer in layers for n in (path, layer.name)}
        classes = {type(layer).__name__ for _, _, layer in layers}

        def available() -> str:
            shown = sorted(names)
            more = f" (+{len(shown) - 40} more)" if len(shown) > 40 else ""
            return ", ".join(shown[:40]) + more + "; classes: " + ", ".join(sorted(classes))

        for key, entries in (("include", self.include or ()), ("exclude", self.exclude)):
            unknown = sorted(e for e in entries if e not in names and e not in classes and not is_keras_layer_class(e))
            if unknown:
                raise SpecError(
                    f"layers.{key} names {unknown}, which match no layer or layer class of model "
                    f"'{model_name}'; available layers: {available()}",
                    field=f"layers.{key}",
                )
        unknown = sorted(n for n in self.overrides if n not in names)
        if unknown:
            raise SpecError(
                f"layers.overrides names {unknown}, which match no layer of model '{model_name}'; "
                f"available layers: {available()}",
                field=f"layers.overrides.{unknown[0]}",
            )

    def refuse_nested(
        self, model_name: str, layers: Sequence[LayerEntry], *, why: str, uses: Callable[[Any], bool]
    ) -> None:
        """For a step that acts on the top level of the model only: SpecError for an `include` entry that names
        a layer below the top level or a nested model / wrapper (everything inside it), and for an override under
        a nested path or name for which `uses(override)` is true. `why` says why the step cannot act there."""
        top = {layer.name for path, prefix, layer in layers if not prefix}
        containers = {p for _, prefix, _ in layers for p in prefix}
        inside = _nested_owner(layers)
        classes = {type(layer).__name__ for _, _, layer in layers}
        for entry in sorted(self.include or ()):
            if entry in classes or is_keras_layer_class(entry):
                continue
            if entry in containers:
                raise SpecError(
                    f"layers.include names '{entry}', a nested model or wrapper (everything inside it): "
                    f"{why}; select layers at the top level of model '{model_name}', or exclude "
                    f"'{entry}'",
                    field="layers.include",
                )
            if entry not in top and entry in inside:
                raise SpecError(
                    f"layers.include names '{entry}', a layer inside '{inside[entry]}': {why}; select "
                    f"layers at the top level of model '{model_name}'",
                    field="layers.include",
                )
        for key, o in sorted(self.overrides.items()):
            if key not in top and key in inside and uses(o):
                raise SpecError(
                    f"layers.overrides names '{key}', a layer inside '{inside[key]}': {why}; only "
                    f"'skip' can be honoured there",
                    field=f"layers.overrides.{key}",
                )


def _nested_owner(layers: Iterable[LayerEntry]) -> dict[str, str]:
    """Path and name of every layer below the top level -> the path of the nested model or wrapper holding it."""
    out: dict[str, str] = {}
    for path, prefix, layer in layers:
        if prefix:
            owner = "/".join(prefix)
            out.setdefault(path, owner)
            out.setdefault(layer.name, owner)
    return out
