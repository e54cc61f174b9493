"""Synthetic manifests for the report tests: the shape `pipeline.compress` writes (plus the budget and sensitivity
records of the budget step), with numbers made up by the test and layer names it chooses."""

from __future__ import annotations

import copy

HOSTILE = '<script>alert("x")</script><img src=http://evil.example/a.png onerror=alert(1)>$\\frac{a}{b}$\x01 & -->'


def _params(layers: dict[str, tuple[int, int]]) -> dict:
    total = sum(p for p, _ in layers.values())
    nonzero = sum(nz for _, nz in layers.values())
    return {
        "total": total,
        "trainable": total,
        "non_trainable": 0,
        "nonzero": nonzero,
        "zeros": total - nonzero,
        "overall_sparsity": (total - nonzero) / total,
        "prunable": {"total": total, "nonzero": nonzero},
        "sparsity": (total - nonzero) / total,
        "layers": {
            n: {"class": "Dense", "params": p, "nonzero": nz, "sparsity": (p - nz) / p} for n, (p, nz) in layers.items()
        },
    }


def _measure(layers: dict[str, tuple[int, int]], acc: float, loss: float, gz: int, macs: int, ms: float) -> dict:
    return {
        "evaluation": {"accuracy": acc, "loss": loss},
        "params": _params(layers),
        "compute": {
            "macs": macs,
            "flops": 2 * macs,
            "effective_macs": macs // 2,
            "effective_flops": macs,
            "layers": {},
            "unknown": [],
        },
        "latency_ms": {
            f"batch_{b}": {
                "batch_size": b,
                "median": ms * b,
                "p10": ms * b * 0.9,
                "p25": ms * b * 0.95,
                "p75": ms * b * 1.05,
                "p90": ms * b * 1.1,
                "mean": ms * b,
                "min": ms * b * 0.8,
                "runs": 30,
            }
            for b in (1, 32)
        },
        "file": {"bytes": gz * 2, "gzip_bytes": gz},
    }


def manifest(layer_names=("conv", "dense", "predictions"), *, collapsed: bool = False) -> dict:
    """A prune → structured → finetune job on a model whose layers have the given names."""
    before_layers = {n: (1000 * (i + 1), 1000 * (i + 1)) for i, n in enumerate(layer_names)}
    after_layers = {n: (750 * (i + 1), 200 * (i + 1)) for i, n in enumerate(layer_names)}
    acc_after = 0.60 if collapsed else 0.91
    before = _measure(before_layers, 0.92, 0.30, 160_000, 90_000, 0.5)
    after = _measure(after_layers, acc_after, 0.35, 40_000, 60_000, 0.4)
    history = {
        "loss": [0.5, 0.4, 0.35],
        "val_loss": [0.55, 0.45, 0.4],
        "accuracy": [0.85, 0.88, 0.9],
        "val_accuracy": [0.84, 0.87, 0.89],
    }
    quality_note = (
        ("QUALITY COLLAPSED: held-out accuracy fell from 92.0% to 60.0% (-32.0 points; tolerance 5.0 points).")
        if collapsed
        else None
    )
    return {
        "secateurs": {"version": "0.1.0", "created_at": "2026-01-01T00:00:00+00:00"},
        "versions": {"python": "3.11", "tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2.4"},
        "seed": 0,
        "inputs": {
            "model": {"file": f"{layer_names[0]}.keras", "bytes": 320_000, "format": "keras"},
            "data": {"file": "d.npz", "train_samples": 2000, "val_samples": 500},
        },
        "task": {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
        "before": before,
        "after": after,
        "steps": [
            {
                "index": 0,
                "kind": "prune",
                "wall_time_s": 3.5,
                "history": history,
                "sparsity": 0.8,
                "layer_sparsity": {n: 0.8 for n in layer_names},
                "spared": [],
                "allocation": None,
                "batchnorm": {"before": {"accuracy": 0.5}, "after": {"accuracy": 0.9}},
            },
            {
                "index": 1,
                "kind": "structured",
                "wall_time_s": 2.0,
                "history": copy.deepcopy(history),
                "report": {
                    "criterion": "l1",
                    "scope": "layer",
                    "keep_ratio": 0.75,
                    "round_to": 1,
                    "groups": [
                        {
                            "layers": [n],
                            "units_before": 8 * (i + 1),
                            "units_after": 6 * (i + 1),
                            "kept_indices": {},
                            "dependents": [],
                            "keep_ratio": 0.75,
                        }
                        for i, n in enumerate(layer_names[:-1])
                    ],
                    "skipped": {layer_names[-1]: "not pruned: its activation 'softmax' mixes units"},
                    "params_before": 6000,
                    "params_after": 4500,
                    "compensated": [],
                },
            },
            {"index": 2, "kind": "finetune", "wall_time_s": 1.0, "history": {"loss": [0.3], "val_loss": [0.33]}},
        ],
        "artifacts": {
            "keras": {
                "file": "model.keras",
                "format": "keras",
                "bytes": 80_000,
                "gzip_bytes": 40_000,
                "encoding": "float32",
                "params": 4500,
                "nonzero": 1200,
                "nonzero_params": 1200,
                "sparsity_preserved": True,
                "evaluation": {"accuracy": acc_after, "loss": 0.35, "how": "x", "samples": 500},
            },
            "tflite": {
                "file": "model.tflite",
                "format": "tflite",
                "bytes": 30_000,
                "gzip_bytes": 25_000,
                "encoding": "float32, sparse kernels",
                "params": 4400,
                "nonzero_params": 1150,
                "sparsity_preserved": True,
                "evaluation": {"accuracy": acc_after, "loss": 0.35},
            },
        },
        "summary": {
            "win": "none" if collapsed else "size",
            "within_tolerance": not collapsed,
            "quality": {
                "accuracy": {
                    "before": 0.92,
                    "after": acc_after,
                    "change": acc_after - 0.92,
                    "kind": "accuracy",
                    "max_drop": 0.05,
                    "ok": not collapsed,
                }
            },
            "params_total_before": 6000,
            "params_total_after": 4500,
            "params_nonzero_before": 6000,
            "params_nonzero_after": 1200,
            "sparsity_after": 0.8,
            "gzip_size_ratio": 0.25,
            "latency_speedup": {"batch_1": 1.25, "batch_32": 1.25},
            "latency_speedup_beyond_spread": {"batch_1": True, "batch_32": False},
            "sparsity_preserved_in_export": True,
            "notes": [n for n in (quality_note, "unstructured sparsity only: a size win") if n],
        },
        "wall_time_s": 12.5,
    }


def budget(metric: str = "accuracy", chosen=2) -> dict:
    """A budget search over four levels: the first three within a 2-point drop."""
    trials = []
    for i, level in enumerate((0.5, 0.7, 0.8, 0.9)):
        m = 0.92 - 0.005 * i - (0.05 if level == 0.9 else 0.0)
        trials.append(
            {
                "level": level,
                "metric": m,
                "drop": 0.92 - m,
                "nonzero_params": int(6000 * (1 - level)),
                "size_bytes": int(160_000 * (1 - level) + 5000),
                "macs": 60_000,
                "latency_ms": 0.4,
                "within_budget": 0.92 - m <= 0.02,
                "epochs": 2,
                "pruned_metric": m - 0.01 if level < 0.6 else m - 0.1,
                "kept": "fine_tuned",
            }
        )
    return {
        "metric": metric,
        "baseline": 0.92,
        "max_drop": 0.02,
        "objective": "size",
        "met": True,
        "chosen": chosen,
        "trials": trials,
    }


def sensitivity(layer_names=("conv", "dense", "predictions")) -> dict:
    rows = [
        {
            "layer": n,
            "level": level,
            "metric": 0.92 - (i + 1) * level * 0.05,
            "drop": (i + 1) * level * 0.05,
            "params": 1000 * (i + 1),
            "macs": 500 * (i + 1),
        }
        for i, n in enumerate(layer_names)
        for level in (0.25, 0.5, 0.75, 0.9)
    ]
    return {"metric": "accuracy", "baseline": 0.92, "rows": rows}
