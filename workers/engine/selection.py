"""Which layers a step targets: the one layer selector of unstructured pruning, regularization and structured pruning.

Public API (used by `registry`, `pruning` and `structured`)::

    selector = Selector.of(selection, overrides=None)   from a LayerSelection-like value (include, exclude, overrides)
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

Plain values only: overrides are read through their attributes (`skip`, `keep_ratio`, `target_sparsity`,
`threshold`), so the selector takes the spec's LayerOverride or any object with those attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras

from workers.engine.errors import SpecError

LayerEntry = tuple[str, tuple[str, ...], Any]  # (path, enclosing names, layer)


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
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, selection=None, overrides: Mapping[str, Any] | None = None) -> Selector:
        """From a value with `include`, `exclude` and `overrides` attributes (the spec's LayerSelection) or None
        (every layer); `overrides`, when given, replaces the selection's."""
        include = getattr(selection, "include", None)
        if overrides is None:
            overrides = getattr(selection, "overrides", None) or {}
        return cls(include=frozenset(include) if include is not None else None,
                   exclude=frozenset(getattr(selection, "exclude", None) or ()), overrides=dict(overrides))

    def override(self, path: str, name: str | None = None) -> Any | None:
        return override_for(self.overrides, path, name)

    def reason(self, path: str, prefix: tuple[str, ...], layer) -> str | None:
        """Why the layer is left out, or None when it is selected."""
        keys = layer_keys(path, prefix, layer)
        if self.include is not None and not keys & self.include:
            return "not in layers.include"
        if keys & self.exclude:
            return "in layers.exclude"
        o = self.override(path, layer.name)
        if o is not None and getattr(o, "skip", False):
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
                raise SpecError(f"layers.{key} names {unknown}, which match no layer or layer class of model "
                                f"'{model_name}'; available layers: {available()}", field=f"layers.{key}")
        unknown = sorted(n for n in self.overrides if n not in names)
        if unknown:
            raise SpecError(f"layers.overrides names {unknown}, which match no layer of model '{model_name}'; "
                            f"available layers: {available()}", field=f"layers.overrides.{unknown[0]}")

    def refuse_nested(self, model_name: str, layers: Sequence[LayerEntry], *, why: str,
                      uses: Callable[[Any], bool]) -> None:
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
                raise SpecError(f"layers.include names '{entry}', a nested model or wrapper (everything inside it): "
                                f"{why}; select layers at the top level of model '{model_name}', or exclude "
                                f"'{entry}'", field="layers.include")
            if entry not in top and entry in inside:
                raise SpecError(f"layers.include names '{entry}', a layer inside '{inside[entry]}': {why}; select "
                                f"layers at the top level of model '{model_name}'", field="layers.include")
        for key, o in sorted(self.overrides.items()):
            if key not in top and key in inside and uses(o):
                raise SpecError(f"layers.overrides names '{key}', a layer inside '{inside[key]}': {why}; only "
                                f"'skip' can be honoured there", field=f"layers.overrides.{key}")


def _nested_owner(layers: Iterable[LayerEntry]) -> dict[str, str]:
    """Path and name of every layer below the top level -> the path of the nested model or wrapper holding it."""
    out: dict[str, str] = {}
    for path, prefix, layer in layers:
        if prefix:
            owner = "/".join(prefix)
            out.setdefault(path, owner)
            out.setdefault(layer.name, owner)
    return out
