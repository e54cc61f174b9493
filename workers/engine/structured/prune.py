"""The structured-pruning facade: select, score, allocate, rebuild; and the masked reference that checks it.

Select. A group is pruned only if every member is selected (`selection.Selector`: include / exclude by layer or
class name, overrides[name].skip); overrides[name].keep_ratio sets the group's ratio (the largest one when coupled
members disagree) and takes that group out of the global ranking. Nested models are barriers, so an entry that
asks to prune inside one (an `include` entry naming a nested layer or model, a keep_ratio override on a nested
path) is refused with a SpecError naming it; `exclude` and `skip` entries under nested paths are accepted (they
are honoured anyway).

`masked_reference(model, report)` builds the model the rebuilt one must match: a copy of the original whose
consumers have the input rows of removed channels set to zero (and the same compensation shifts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import keras
import numpy as np

from workers.engine import counting, importance
from workers.engine.errors import SpecError
from workers.engine.registry import walk_layers
from workers.engine.selection import LayerOverride, LayerSelection, Selector
from workers.engine.structured import groups as groups_mod
from workers.engine.structured.graph import Graph, keep_indices
from workers.engine.structured.groups import SCOPES, Group, MacsModel, dependents, find_groups, layers_by_class
from workers.engine.structured.rebuild import compensation, rebuild
from workers.engine.structured.scoring import group_scores, member_scores

NESTED = "structured pruning treats nested models as barriers and removes no unit inside them"


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


def _check_arguments(keep_ratio, scope: str, round_to) -> int:
    if not isinstance(keep_ratio, (int, float)) or not 0.0 < float(keep_ratio) <= 1.0:
        raise SpecError(f"keep_ratio must be within (0, 1], got {keep_ratio!r}", field="keep_ratio")
    if scope not in SCOPES:
        raise SpecError(f"unknown scope '{scope}'; allowed: {', '.join(sorted(SCOPES))}", field="scope")
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise SpecError(f"round_to must be an integer >= 1, got {round_to!r}", field="round_to")
    return int(round_to)


def _selector(model, selection: LayerSelection | None, overrides: Mapping[str, LayerOverride] | None) -> Selector:
    """The step's selector; SpecError for entries that name nothing, or ask to prune inside a nested model.
    Override values may be LayerOverrides or mappings of their fields (`LayerOverride.of`)."""
    selector = Selector.of(selection, overrides)
    layers = list(walk_layers(model))
    selector.check(model.name, layers)
    selector.refuse_nested(model.name, layers, why=NESTED, uses=lambda o: o.keep_ratio is not None)
    return selector


def _choose(
    g: Graph, groups: list[Group], skipped: dict[str, str], selector: Selector, keep_ratio: float
) -> list[Group]:
    """The groups whose members are all selected, with their keep ratios; the others go to `skipped`."""
    chosen: list[Group] = []
    for grp in groups:
        reasons = {n: selector.reason(n, (), g.producers[n].layer) for n in grp.members}
        blocked = {n: r for n, r in reasons.items() if r}
        if blocked:
            for n in grp.members:
                skipped[n] = (
                    f"not pruned: {blocked[n]}"
                    if n in blocked
                    else f"not pruned: coupled with {', '.join(sorted(blocked))} ({'; '.join(blocked.values())})"
                )
            continue
        ratios = [o.keep_ratio for n in grp.members if (o := selector.override(n)) is not None and o.keep_ratio]
        grp.overridden = bool(ratios)
        grp.keep_ratio = max(ratios) if ratios else float(keep_ratio)  # coupled members: the most conservative
        chosen.append(grp)
    return chosen


def _prepare(model, criterion: str, keep_ratio, scope: str, round_to, selection, overrides):
    """The criterion, checked round_to, traced graph, chosen groups (with their keep ratios) and skipped producers."""
    crit = importance.get_criterion(criterion)
    round_to = _check_arguments(keep_ratio, scope, round_to)
    g = Graph(model)
    selector = _selector(model, selection, overrides)
    groups, skipped = find_groups(g)
    skipped.update({name: f"not pruned: it is a barrier: {why}" for name, why in g.blocked_producers.items()})
    chosen = _choose(g, groups, skipped, selector, keep_ratio)
    return crit, round_to, g, chosen, skipped


def _allocate(
    g: Graph,
    chosen: list[Group],
    crit,
    keep_ratio: float,
    scope: str,
    round_to: int,
    x_calib,
    forced: set[int] | None = None,
    renormalize: bool = True,
) -> None:
    """Score every chosen group on the model's current weights and set its `keep`. Classes in `forced` (removed
    before, `gradual`) score 0 so that they rank last in their group; the global ranking then normalizes each group
    over its scores with those zeros (`renormalize`: its survivors rise), or by the mean before the zeros."""
    scores = member_scores(g, chosen, crit, x_calib) if chosen else {}
    for grp in chosen:
        grp.scores = group_scores(g, grp, scores)
        if forced:
            grp.scale = None if renormalize else float(grp.scores.mean())
            grp.scores[np.isin(grp.classes, list(forced))] = 0.0
    macs = None
    if scope == "global" and chosen and groups_mod.GLOBAL_RULE == "macs":
        macs = MacsModel(g, {path: e["macs"] for path, e in counting.macs(g.model)["layers"].items()})
    SCOPES[scope](chosen, float(keep_ratio), round_to, macs=macs)


def _drops(chosen: list[Group], forced: set[int] | None = None) -> list[set[int]]:
    """Per chosen group, the classes removed: those ranked below its `keep`, and the `forced` ones it holds."""
    out = []
    for grp in chosen:
        order = np.argsort(-grp.scores, kind="stable")
        drop = {int(r) for r in grp.classes[order[grp.keep :]]}
        if forced:
            drop |= {int(r) for r in grp.classes if int(r) in forced}
        out.append(drop)
    return out


def _surgery(
    model,
    g: Graph,
    chosen: list[Group],
    drops: list[set[int]],
    skipped: dict[str, str],
    *,
    criterion: str,
    scope: str,
    keep_ratio: float,
    round_to: int,
    x_calib,
) -> tuple[keras.Model, StructuredReport]:
    """Rebuild without the classes in `drops` (one set per chosen group) and report every group."""
    removed: set[int] = set()
    report_groups = []
    by_class = layers_by_class(g)
    for grp, drop in zip(chosen, drops):
        removed |= drop
        kept = {n: keep_indices(g, g.producers[n].ids, drop).tolist() for n in grp.members}
        report_groups.append(
            PrunedGroup(
                layers=list(grp.members),
                units_before=grp.all_classes,
                units_after=grp.all_classes - len(drop),
                kept_indices=kept,
                dependents=dependents(g, by_class, grp.classes, grp.members),
                keep_ratio=grp.keep_ratio,
            )
        )
    shifts = compensation(g, removed, x_calib)
    new_model = rebuild(g, removed, zero_only=False, shifts=shifts)
    report = StructuredReport(
        criterion=criterion,
        scope=scope,
        keep_ratio=float(keep_ratio),
        round_to=round_to,
        groups=report_groups,
        skipped=skipped,
        params_before=int(model.count_params()),
        params_after=int(new_model.count_params()),
        compensated=list(shifts),
        shifts=shifts,
    )
    return new_model, report


def structured_prune(
    model,
    *,
    criterion: str,
    keep_ratio: float,
    scope: str = "layer",
    round_to: int = 1,
    selection: LayerSelection | None = None,
    x_calib=None,
    overrides: Mapping[str, LayerOverride] | None = None,
) -> tuple[keras.Model, StructuredReport]:
    """Remove the least important units/filters and rebuild a genuinely smaller model of stock Keras layers.

    Returns the rebuilt (uncompiled) model and a report of every pruned group and every producer left alone.
    Data criteria ("mean_activation", "apoz") need `x_calib`: the calibration samples, used in full.
    `overrides`, when given, replaces `selection.overrides`.
    """
    crit, round_to, g, chosen, skipped = _prepare(model, criterion, keep_ratio, scope, round_to, selection, overrides)
    _allocate(g, chosen, crit, float(keep_ratio), scope, round_to, x_calib)
    return _surgery(
        model,
        g,
        chosen,
        _drops(chosen),
        skipped,
        criterion=crit.name,
        scope=scope,
        keep_ratio=float(keep_ratio),
        round_to=round_to,
        x_calib=x_calib,
    )


def masked_reference(model, report: StructuredReport) -> keras.Model:
    """A copy of `model` with the removed units zeroed where they are consumed (the rebuilt model's twin)."""
    g = Graph(model)
    removed: set[int] = set()
    for grp in report.groups:
        for name, kept in grp.kept_indices.items():
            if name not in g.producers:
                raise SpecError(
                    f"the report names layer '{name}', which is not a producer of model '{model.name}'", field="report"
                )
            ids = g.producers[name].ids
            drop = np.setdiff1d(np.arange(len(ids)), np.asarray(kept, dtype=np.int64))
            removed |= {int(r) for r in g.root[ids[drop]]}
    return rebuild(g, removed, zero_only=True, shifts=report.shifts)
