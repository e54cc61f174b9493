"""Groups of coupled producers and how many units each keeps.

Channels united by merges form one *class* (removed together); producers sharing classes form one *group*
(e.g. every branch of a residual chain). A group's score per class comes from `scoring.py`; this module decides
the count each group keeps:

- scope="layer": each group keeps ceil(keep_ratio * units);
- scope="global": one ranking over all groups of scores normalized per group; a group with an override's
  keep_ratio is taken out of the ranking and keeps its own share.

Counts are rounded up to a multiple of round_to (capped at the original count) and at least max(1, round_to)
units stay in every group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers.engine import importance
from workers.engine.structured.graph import Graph


@dataclass
class Group:
    members: list[str]
    classes: np.ndarray  # prunable class roots, in order of first appearance
    all_classes: int  # distinct classes (prunable and fixed) over the members' channels
    keep_ratio: float = 1.0
    overridden: bool = False
    scores: np.ndarray | None = None
    keep: int = 0


def find_groups(g: Graph) -> tuple[list[Group], dict[str, str]]:
    """Producers joined by shared prunable classes; a producer whose channels are all fixed is skipped (why)."""
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
        groups.append(Group(names, prunable, len(ordered)))
    return groups, skipped


def keep_count(units: int, keep_ratio: float, round_to: int = 1) -> int:
    """ceil(keep_ratio * units), at least 1, rounded up to a multiple of round_to, at most units."""
    k = max(1, math.ceil(keep_ratio * units - 1e-9))
    k = math.ceil(k / round_to) * round_to
    return min(k, units)


def _keep_layer(groups: list[Group], keep_ratio: float, round_to: int) -> None:
    for grp in groups:
        grp.keep = keep_count(len(grp.classes), grp.keep_ratio, round_to)


def _keep_global(groups: list[Group], keep_ratio: float, round_to: int) -> None:
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


SCOPES: dict[str, Callable[[list[Group], float, int], None]] = {"layer": _keep_layer, "global": _keep_global}


def layers_by_class(g: Graph) -> dict[int, list[str]]:
    """For every channel class, the traced layers whose inputs or outputs carry it (in graph order)."""
    index: dict[int, list[str]] = {}
    for name in g.handlers:
        maps = [m for m in (*g.in_maps[name], *g.out_maps[name]) if len(m)]
        if maps:
            for r in np.unique(g.root[np.concatenate(maps)]):
                index.setdefault(int(r), []).append(name)
    return index


def dependents(g: Graph, index: dict[int, list[str]], classes: np.ndarray, members: list[str]) -> list[str]:
    """Layers other than the members that are resliced with the group, in graph order."""
    names = {n for r in classes for n in index.get(int(r), [])} - set(members)
    return [n for n in g.handlers if n in names]
