"""The sensitivity and budget steps end to end through `compress`, on real MNIST digits and a regression task.

The MLP (784-64-32-10, 3 epochs on 8,000 real digits) reaches ~0.94 held-out accuracy; its big first layer is
redundant and its small output layer is not, which is what the allocation must see. A linear regression with an
exact linear target cannot lose any weight without a large relative rise of the loss: the budget it gets cannot
be met.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from rich.console import Console

from workers.console import print_summary
from workers.engine.errors import Cancelled
from workers.engine.pipeline import compress
from workers.spec import JobSpec

pytestmark = pytest.mark.slow

L = keras.layers
QUIET = {"latency": False}


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory, mnist):
    x, y, xv, yv = mnist
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            L.Flatten(name="flat"),
            L.Dense(64, activation="relu", name="fc1"),
            L.Dense(32, activation="relu", name="fc2"),
            L.Dense(10, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=128, verbose=0)
    d = tmp_path_factory.mktemp("search")
    model.save(d / "mlp.keras")
    np.savez(d / "mnist.npz", x_train=x, y_train=y, x_val=xv, y_val=yv)
    return d / "mlp.keras", d / "mnist.npz"


@pytest.fixture(scope="module")
def linear_files(tmp_path_factory):
    rng = np.random.default_rng(0)
    w = rng.uniform(1.0, 2.0, (16, 1)) * rng.choice([-1.0, 1.0], (16, 1))
    x, xv = rng.normal(size=(512, 16)).astype("float32"), rng.normal(size=(256, 16)).astype("float32")
    y = (x @ w + 0.01 * rng.normal(size=(512, 1))).astype("float32")
    yv = (xv @ w + 0.01 * rng.normal(size=(256, 1))).astype("float32")
    model = keras.Sequential([keras.Input((16,)), L.Dense(1, name="linear")])
    model.get_layer("linear").set_weights([w.astype("float32"), np.zeros(1, "float32")])
    model.compile("adam", "mse")
    d = tmp_path_factory.mktemp("linear")
    model.save(d / "linear.keras")
    np.savez(d / "linear.npz", x_train=x, y_train=y, x_val=xv, y_val=yv)
    return d / "linear.keras", d / "linear.npz"


def _run(tmp_path, files, spec: dict, **kw):
    out = tmp_path / "out"
    return compress(files[0], files[1], JobSpec.model_validate(spec), out, **kw), out


def _kernels(path) -> dict[str, np.ndarray]:
    model = keras.saving.load_model(path)
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


def test_sensitivity_step_writes_its_artifacts_and_feeds_an_exact_allocation(tmp_path, mlp_files):
    events = []
    manifest, out = _run(
        tmp_path,
        mlp_files,
        {
            "steps": [
                {"kind": "sensitivity", "levels": [0.95, 0.5, 0.9], "samples": 1000},
                {"kind": "prune", "target_sparsity": 0.9, "allocation": "sensitivity"},
            ],
            "evaluation": QUIET,
        },
        progress=events.append,
    )
    analysis = json.loads((out / "sensitivity.json").read_text())
    assert (out / "sensitivity.csv").read_text().count("\n") == 1 + 9
    assert analysis["metric"] == "accuracy" and analysis["levels"] == [0.5, 0.9, 0.95]
    assert [r["layer"] for r in analysis["rows"]] == ["fc1"] * 3 + ["fc2"] * 3 + ["out"] * 3
    assert manifest["steps"][0]["rows"] == analysis["rows"] and manifest["steps"][0]["artifacts"]
    layer_events = [e for e in events if e.phase == "sensitivity" and e.layer]
    assert [(e.layer, e.step, e.steps) for e in layer_events] == [("fc1", 1, 3), ("fc2", 2, 3), ("out", 3, 3)]

    kernels = _kernels(out / "model.keras")
    size = sum(k.size for k in kernels.values())
    zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
    assert zeros == math.floor(0.9 * size + 0.5)  # the overall target, exactly
    drops = {r["layer"]: r["drop"] for r in analysis["rows"] if r["level"] == 0.9}
    sparsity = {name: float(np.mean(k == 0)) for name, k in kernels.items()}
    most, least = max(drops, key=drops.get), min(drops, key=drops.get)
    assert sparsity[most] < sparsity[least]  # the sensitive layer keeps more of its weights
    assert manifest["steps"][1]["allocation"]["out/kernel"] == pytest.approx(sparsity["out"], abs=1e-9)
    assert manifest["after"]["evaluation"]["accuracy"] > 0.6  # one shot at 90 %, no fine-tuning


def test_a_budget_job_that_meets_its_budget(tmp_path, mlp_files):
    events = []
    manifest, out = _run(
        tmp_path,
        mlp_files,
        {"steps": [{"kind": "budget", "max_drop": 0.02, "epochs": 1, "max_trials": 3}], "evaluation": QUIET},
        progress=events.append,
    )
    budget = manifest["budget"]
    assert budget["met"] is True and manifest["summary"]["budget_met"] is True
    assert budget["metric"] == "accuracy" and budget["max_drop"] == 0.02 and budget["objective"] == "nonzero_params"
    assert budget["baseline"] == manifest["before"]["evaluation"]["accuracy"]
    b, n = budget["baseline"], 2000  # one standard error of the held-out accuracy: the near-miss margin
    assert budget["noise"] == pytest.approx(math.sqrt(b * (1 - b) / n)) and budget["note"] is None
    trials = budget["trials"]
    assert 1 <= len(trials) <= 3
    for t in trials:
        assert {
            "level",
            "metric",
            "drop",
            "nonzero_params",
            "size_bytes",
            "macs",
            "latency_ms",
            "within_budget",
            "epochs",
        } <= set(t)
        assert t["drop"] == pytest.approx(budget["baseline"] - t["metric"])
        assert t["within_budget"] == (t["drop"] <= 0.02) and t["epochs"] == 1
        # the better of the level pruned at once and its fine-tune is kept
        assert t["kept"] in ("fine_tuned", "pruned") and t["metric"] >= t["pruned_metric"]
        if t["kept"] == "pruned":
            assert t["metric"] == t["pruned_metric"]
    chosen = trials[budget["chosen"]]
    assert chosen["within_budget"]
    assert chosen["nonzero_params"] == min(t["nonzero_params"] for t in trials if t["within_budget"])
    # the returned model is the chosen trial's model
    assert manifest["after"]["evaluation"]["accuracy"] == pytest.approx(chosen["metric"], abs=1e-6)
    assert manifest["after"]["params"]["nonzero"] == chosen["nonzero_params"]
    kernels = _kernels(out / "model.keras")
    zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
    assert zeros / sum(k.size for k in kernels.values()) == pytest.approx(chosen["level"], abs=1e-4)
    assert chosen["level"] >= 0.5
    assert (out / "sensitivity.json").exists()  # computed for the allocation, kept as an artifact
    numbered = sorted({e.trial for e in events if e.phase == "budget" and e.trial})
    assert numbered == list(range(1, len(trials) + 1))
    for i, t in enumerate(trials[1:], 1):  # warm starts: from the most compressed trial within budget before
        if t["retry_of"] is not None:  # or a near miss fine-tuned again at its level
            assert t["start"] == t["retry_of"] == i - 1 and t["level"] == trials[i - 1]["level"]
            continue
        before = [j for j in range(i) if trials[j]["within_budget"]]
        assert t["start"] == (max(before, key=lambda j: trials[j]["level"]) if before else None)


def test_test_arrays_are_measured_but_never_decide_the_search(tmp_path, mlp_files, mnist):
    """x_test/y_test: the job measures the model on them before and after and judges the returned model there, and
    nothing it chooses depends on them: the same job without them runs the same trials to the digit."""
    _, _, xv, yv = mnist
    with np.load(mlp_files[1]) as f:
        train = {k: f[k] for k in ("x_train", "y_train")}
    held, tested = tmp_path / "held.npz", tmp_path / "tested.npz"
    np.savez(held, **train, x_val=xv[::2], y_val=yv[::2])
    np.savez(tested, **train, x_val=xv[::2], y_val=yv[::2], x_test=xv[1::2], y_test=yv[1::2])
    spec = {"steps": [{"kind": "budget", "max_drop": 0.02, "epochs": 1, "max_trials": 2}], "evaluation": QUIET}
    plain, _ = _run(tmp_path / "plain", (mlp_files[0], held), spec)
    manifest, out = _run(tmp_path / "tested", (mlp_files[0], tested), spec)

    assert manifest["inputs"]["data"]["test_samples"] == len(yv[1::2])
    assert plain["inputs"]["data"]["test_samples"] is None
    assert [t["metric"] for t in manifest["budget"]["trials"]] == [t["metric"] for t in plain["budget"]["trials"]]
    assert manifest["budget"]["chosen"] == plain["budget"]["chosen"]
    assert manifest["after"]["evaluation"] == plain["after"]["evaluation"]
    # measured on the test half, before and after, as Keras measures it
    model = keras.saving.load_model(out / "model.keras")
    after = manifest["after"]["test_evaluation"]
    keras_says = model.evaluate(xv[1::2], yv[1::2], verbose=0, return_dict=True)["accuracy"]
    assert after["accuracy"] == pytest.approx(keras_says)
    test = manifest["budget"]["test"]
    assert test["baseline"] == manifest["before"]["test_evaluation"]["accuracy"] and test["metric"] == after["accuracy"]
    assert test["drop"] == pytest.approx(test["baseline"] - test["metric"])
    assert test["within_budget"] == (test["drop"] <= 0.02 + 1e-6)
    summary = manifest["summary"]
    assert summary["budget_met_on_test"] == test["within_budget"] and "accuracy" in summary["quality_test"]
    assert "budget" not in plain or "test" not in plain["budget"]
    assert "budget_met_on_test" not in plain["summary"] and "quality_test" not in plain["summary"]
    assert "On the test data, which the search never saw" in (out / "report.html").read_text()
    console = Console(record=True, width=200)
    print_summary(manifest, out, console)
    text = console.export_text()
    assert "test accuracy" in text and "on the test data, which the search never saw" in text


def test_a_budget_below_the_noise_of_the_held_out_metric_says_so(tmp_path, mlp_files):
    spec = {"steps": [{"kind": "budget", "max_drop": 0.001, "epochs": 1, "max_trials": 1}], "evaluation": QUIET}
    manifest, _ = _run(tmp_path, mlp_files, spec)
    budget = manifest["budget"]
    assert budget["noise"] > 0.001  # about 0.005 at 94 % on 2,000 digits
    assert "below one standard error of the held-out accuracy" in budget["note"]
    assert budget["note"] in manifest["summary"]["notes"]
    assert budget["note"].startswith("BUDGET NOT MET") == (not budget["met"])


def test_a_budget_that_cannot_be_met_returns_the_closest_trial_and_says_so(tmp_path, linear_files):
    manifest, out = _run(
        tmp_path,
        linear_files,
        {
            "steps": [{"kind": "budget", "max_drop": 0.5, "epochs": 1, "max_trials": 3}],
            "training": {"batch_size": 64},
            "evaluation": QUIET,
        },
    )
    budget = manifest["budget"]
    assert budget["metric"] == "loss" and budget["met"] is False and manifest["summary"]["budget_met"] is False
    trials = budget["trials"]
    assert len(trials) == 3 and not any(t["within_budget"] for t in trials)
    assert all(t["drop"] > 0.5 for t in trials)  # relative rises of the loss
    assert all(t["metric"] <= t["pruned_metric"] for t in trials)  # a loss: the lower of the two candidates is kept
    chosen = trials[budget["chosen"]]
    assert chosen["drop"] == min(t["drop"] for t in trials)
    assert "BUDGET NOT MET" in budget["note"] and budget["note"] in manifest["summary"]["notes"]
    kernel = _kernels(out / "model.keras")["linear"]
    assert int(np.sum(kernel == 0)) == math.floor(chosen["level"] * 16 + 0.5)
    assert manifest["after"]["evaluation"]["loss"] == pytest.approx(chosen["metric"], rel=1e-5)


def test_a_trial_whose_fine_tune_loses_more_than_its_pruning_keeps_the_pruned_weights(tmp_path, mlp_files):
    # a learning rate of 1.0 wrecks the MLP whatever is pruned, while pruning it at once, with no training, costs
    # little: every trial keeps its pruned weights, and the budget is met by pruning alone
    manifest, out = _run(
        tmp_path,
        mlp_files,
        {
            "steps": [{"kind": "budget", "max_drop": 0.02, "epochs": 1, "max_trials": 3}],
            "training": {"learning_rate": 1.0},
            "evaluation": QUIET,
        },
    )
    budget = manifest["budget"]
    trials = budget["trials"]
    assert budget["met"] is True and budget["note"] is None
    for t in trials:
        assert t["kept"] == "pruned" and t["metric"] == t["pruned_metric"] and t["epochs"] == 1
    chosen = trials[budget["chosen"]]
    assert chosen["within_budget"] and manifest["after"]["evaluation"]["accuracy"] == pytest.approx(chosen["metric"])
    # the returned weights are the input model's, masked: no fine-tuning step reached them
    before = _kernels(mlp_files[0])
    after = _kernels(out / "model.keras")
    for name, kernel in after.items():
        kept = kernel != 0
        np.testing.assert_array_equal(kernel[kept], before[name][kept])
    zeros = sum(int(np.sum(k == 0)) for k in after.values())
    assert zeros / sum(k.size for k in after.values()) == pytest.approx(chosen["level"], abs=1e-4)
    console = Console(record=True, width=200)
    print_summary(manifest, out, console)  # what `secateurs compress` prints
    line = next(x for x in console.export_text().splitlines() if x.startswith("budget "))
    assert line.startswith("budget met") and line.endswith("pruned at once: its fine-tune lost more")


def test_cancelling_mid_search_stops_before_the_next_trial(tmp_path, mlp_files):
    events = []
    with pytest.raises(Cancelled):
        _run(
            tmp_path,
            mlp_files,
            {"steps": [{"kind": "budget", "max_drop": 0.02, "epochs": 1, "max_trials": 4}], "evaluation": QUIET},
            progress=events.append,
            should_cancel=lambda: any(e.trial == 2 and e.phase == "budget" for e in events),
        )
    trials = {e.trial for e in events if e.phase == "budget" and e.trial}
    assert trials == {1, 2}  # trial 2 announced, then cancelled inside it (its training checks every batch)
    assert not any(e.phase == "budget" and e.message.startswith("trial 2:") for e in events)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory, mnist):
    x, y, xv, yv = mnist
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            L.Reshape((28, 28, 1)),
            L.Conv2D(8, 3, name="c1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(),
            L.MaxPooling2D(2),
            L.Conv2D(16, 3, activation="relu", name="c2"),
            L.GlobalAveragePooling2D(),
            L.Dense(10, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:4000], y[:4000], epochs=3, batch_size=64, verbose=0)
    d = tmp_path_factory.mktemp("cnn")
    model.save(d / "cnn.keras")
    np.savez(d / "d.npz", x_train=x[:4000], y_train=y[:4000], x_val=xv[:1000], y_val=yv[:1000])
    return d / "cnn.keras", d / "d.npz"


def test_structured_allocation_keeps_the_ratio_overall_where_it_costs_least(tmp_path, cnn_files):
    manifest, out = _run(
        tmp_path,
        cnn_files,
        {
            "steps": [
                {"kind": "sensitivity", "method": "structured", "levels": [0.25, 0.5, 0.75]},
                {"kind": "structured", "keep_ratio": 0.5, "allocation": "sensitivity"},
            ],
            "evaluation": QUIET,
        },
    )
    analysis = json.loads((out / "sensitivity.json").read_text())
    sizes = {u["name"]: u["size"] for u in analysis["units"]}
    assert analysis["method"] == "structured" and sizes == {"c1": 8, "c2": 16}
    rebuilt = keras.saving.load_model(out / "model.keras")
    kept = {"c1": rebuilt.get_layer("c1").filters, "c2": rebuilt.get_layer("c2").filters}
    assert sum(kept.values()) == math.ceil(0.5 * 24)  # the overall keep ratio, exactly
    allocation = manifest["steps"][1]["allocation"]
    assert allocation == {name: pytest.approx(kept[name] / size) for name, size in sizes.items()}
    drops = {r["layer"]: r["drop"] for r in analysis["rows"] if r["level"] == 0.25}
    if drops["c1"] != drops["c2"]:  # the group that loses more alone keeps the larger share
        sensitive, other = sorted(drops, key=drops.get, reverse=True)
        assert kept[sensitive] / sizes[sensitive] >= kept[other] / sizes[other]


def test_structured_budget_rebuilds_a_smaller_model_within_budget(tmp_path, cnn_files):
    original = keras.saving.load_model(cnn_files[0])
    manifest, out = _run(
        tmp_path,
        cnn_files,
        {
            "steps": [
                {
                    "kind": "budget",
                    "method": "structured",
                    "objective": "macs",
                    "max_drop": 0.05,
                    "epochs": 1,
                    "max_trials": 2,
                }
            ],
            "training": {"batch_size": 64},
            "evaluation": QUIET,
        },
    )
    budget = manifest["budget"]
    trials = budget["trials"]
    assert budget["method"] == "structured" and len(trials) == 2
    assert all(t["macs"] < manifest["before"]["compute"]["macs"] for t in trials)
    assert all(t["kept"] in ("fine_tuned", "pruned") and t["metric"] >= t["pruned_metric"] for t in trials)
    chosen = trials[budget["chosen"]]
    assert manifest["after"]["compute"]["macs"] == chosen["macs"]
    assert budget["met"] == any(t["within_budget"] for t in trials)
    rebuilt = keras.saving.load_model(out / "model.keras")
    assert rebuilt.count_params() < original.count_params()
    analysis = json.loads((out / "sensitivity.json").read_text())
    assert analysis["method"] == "structured" and {u["name"] for u in analysis["units"]} == {"c1", "c2"}
