"""The engine's preflight: one row per layer with the engine's real rules (registry, pruner plan, structured graph),
MACs and parameters as `metrics` counts them, and step estimates that follow the targets."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.engine.structured.models import mlp_sequential, residual_functional
from workers.engine import counting, metrics, sensitivity
from workers.engine.errors import SpecError
from workers.engine.masks import target_count
from workers.engine.preflight import StepTarget, estimate_steps, layer_table, preflight, weights_size
from workers.engine.registry import prunable_weights
from workers.engine.selection import LayerSelection
from workers.engine.structured import structured_prune

L = keras.layers
UNSTRUCTURED = ["magnitude", "threshold", "n_m", "block"]


def rows(table) -> dict[str, dict]:
    return {r["name"]: r for r in table["layers"]}


def copy_of(model):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def test_residual_rows_name_groups_methods_and_reasons():
    table = layer_table(residual_functional())
    r = rows(table)
    assert "image" not in r  # no InputLayer row
    # stem and both conv_b layers add into the same channels: one group, cut together; conv_a* are on their own
    stem_group = r["stem"]["group"]
    assert stem_group is not None and r["conv_b1"]["group"] == r["conv_b2"]["group"] == stem_group
    assert len({r["conv_a1"]["group"], r["conv_a2"]["group"], r["head_conv"]["group"], stem_group}) == 4
    groups = {g["id"]: g for g in table["groups"]}
    assert groups[stem_group]["layers"] == ["stem", "conv_b1", "conv_b2"] and groups[stem_group]["units"] == 16
    assert {"stem_bn", "bn_b1", "bn_b2", "add1", "add2"} <= set(groups[stem_group]["dependents"])
    # BatchNorm: no kernel, resliced with its producer's group
    assert r["stem_bn"]["group"] == stem_group and r["bn_b1"]["group"] == stem_group
    for name in ("stem_bn", "bn_b1"):
        assert not r[name]["prunable"] and r[name]["methods"] == []
        assert r[name]["reason"].startswith("no prunable kernel: BatchNormalization holds gamma")
    assert r["relu1"]["reason"] == "no weights" and not r["add1"]["prunable"]
    for name in ("stem", "conv_a1", "conv_b1", "head_conv"):
        assert r[name]["prunable"] and r[name]["reason"] is None
        assert r[name]["methods"] == [*UNSTRUCTURED, "structured"]
    # the output layer: spared by the global scope, fixed for structured pruning
    out = r["out"]
    assert not out["prunable"] and out["reason"].startswith("spared: output layer")
    assert out["methods"] == UNSTRUCTURED and out["group"] is None
    assert "model output" in out["structured_reason"]
    assert table["totals"]["groups"] == 4 == len(table["groups"])
    assert table["totals"]["prunable_layers"] == 6


def test_params_and_macs_are_what_metrics_counts():
    model = residual_functional()
    table = layer_table(model)
    stats, compute = counting.param_stats(model), counting.macs(model)
    r = rows(table)
    for path, entry in compute["layers"].items():
        assert r[path]["macs"] == entry["macs"]
    assert sum(x["macs"] for x in table["layers"]) == compute["macs"] == table["totals"]["macs"]
    assert table["totals"]["flops"] == compute["flops"]
    for path, entry in stats["layers"].items():
        assert (r[path]["params"], r[path]["nonzero"]) == (entry["params"], entry["nonzero"])
    assert sum(x["params"] for x in table["layers"]) == stats["total"] == table["totals"]["params"]
    assert table["totals"]["prunable_params"] == stats["prunable"]["total"]
    assert r["stem"]["macs"] == 10 * 10 * 3 * 3 * 3 * 16  # 'same' padding: 10x10 positions of a 3x3x3x16 kernel


class Scale(L.Layer):
    """A custom layer with a weight: not in the pruning registry, a barrier for structured pruning."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), name="w")

    def call(self, x):
        return x * self.w


def test_custom_and_quantized_layers_are_not_prunable_and_say_why():
    inp = keras.Input((6,))
    x = L.Dense(16, name="int8_dense")(inp)
    x = Scale(name="scale")(x)
    x = L.Dense(12, activation="relu", name="hidden")(x)
    out = L.Dense(2, name="head")(x)
    model = keras.Model(inp, out)
    model.get_layer("int8_dense").quantize("int8")
    r = rows(layer_table(model))
    assert not r["int8_dense"]["prunable"] and r["int8_dense"]["reason"].startswith("quantized kernel (int8)")
    assert not r["scale"]["prunable"]
    assert r["scale"]["reason"] == "custom layer class 'Scale': not in the pruning registry"
    assert r["hidden"]["prunable"] and "structured" in r["hidden"]["methods"]


def test_selection_excludes_a_layer_and_blocks_its_coupled_group():
    selection = LayerSelection(exclude=["stem", "conv_a1"])
    r = rows(layer_table(residual_functional(), selection))
    assert not r["conv_a1"]["prunable"] and r["conv_a1"]["reason"] == "in layers.exclude"
    assert r["conv_a1"]["methods"] == [] and r["conv_a1"]["structured_reason"] == "in layers.exclude"
    assert r["stem"]["reason"] == "in layers.exclude"
    # conv_b1 stays prunable unstructured, but its group cannot be cut without the excluded stem
    assert r["conv_b1"]["prunable"] and r["conv_b1"]["methods"] == UNSTRUCTURED
    assert r["conv_b1"]["structured_reason"] == "coupled with stem (in layers.exclude)"
    assert r["conv_a2"]["methods"] == [*UNSTRUCTURED, "structured"]


def test_a_selection_naming_no_layer_is_refused_as_a_job_refuses_it():
    with pytest.raises(SpecError) as e:
        layer_table(mlp_sequential(), LayerSelection(exclude=["no_such_layer"]))
    assert e.value.field == "layers.exclude" and "no_such_layer" in e.value.message


def test_nested_model_layers_are_walked_with_paths():
    inner = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="inner_dense")], name="block")
    inp = keras.Input((8,))
    out = L.Dense(3, name="head")(inner(inp))
    r = rows(layer_table(keras.Model(inp, out)))
    assert "block/inner_dense" in r and "block" not in r
    assert r["block/inner_dense"]["methods"] == UNSTRUCTURED
    assert "nested model 'block'" in r["block/inner_dense"]["structured_reason"]


def test_prune_estimates_follow_the_targets_and_hold_earlier_zeros():
    model = residual_functional()
    prunable = layer_table(model)["totals"]["prunable_params"]
    total = model.count_params()
    steps = [
        StepTarget("prune", method="magnitude", target_sparsity=0.8),
        StepTarget("prune", method="magnitude", target_sparsity=0.5, scope="layer"),
        StepTarget("finetune"),
    ]
    first, second, third = estimate_steps(model, steps)
    assert first["sparsity"] == pytest.approx(target_count(0.8, prunable) / prunable)
    assert first["params"] == total and first["size_bytes"] == 4 * total
    assert first["spared"] == ["out/kernel"]
    assert first["effective_macs"] < 0.35 * first["macs"]
    assert first["gzip_bytes"] < 0.45 * weights_size(residual_functional())["gzip_bytes"]
    assert second["nonzero"] <= first["nonzero"]  # a lower target later: the zeros made before stay
    assert {k: third[k] for k in ("params", "nonzero", "macs")} == {k: second[k] for k in ("params", "nonzero", "macs")}
    assert third["estimate"] == "trains only: unchanged"


def test_structured_estimate_has_the_counts_of_the_data_ranked_step():
    """With scope 'layer' the counts do not depend on the ranking: the estimate (l1, no data) leaves the model a
    structured step ranking by APoZ on data leaves."""
    model = residual_functional()
    x = np.random.default_rng(0).standard_normal((32, 10, 10, 3)).astype("float32")
    real, _ = structured_prune(copy_of(model), criterion="apoz", keep_ratio=0.5, scope="layer", round_to=4, x_calib=x)
    (estimate,) = estimate_steps(
        model, [StepTarget("structured", criterion="apoz", keep_ratio=0.5, scope="layer", round_to=4)]
    )
    assert estimate["params"] == real.count_params() < 0.5 * residual_functional().count_params()
    assert estimate["macs"] == counting.macs(real)["macs"]
    assert "ranks by apoz" in estimate["estimate"]


def test_step_targets_are_checked_as_a_job_checks_them():
    with pytest.raises(SpecError) as e:
        estimate_steps(mlp_sequential(), [StepTarget("prune", method="threshold", threshold=50.0)])
    assert e.value.message.startswith("prune threshold 50 is above the largest |w| of the selected kernels")
    # the pruner's own refusal of a global target beyond its floors (a depthwise kernel keeps a weight per filter)
    inp = keras.Input((8, 8, 64))
    out = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(L.DepthwiseConv2D(3, name="dw")(inp)))
    with pytest.raises(SpecError) as e:
        estimate_steps(keras.Model(inp, out), [StepTarget("prune", target_sparsity=0.95)])
    assert e.value.field == "target_sparsity" and "cannot be reached by scope 'global'" in e.value.message


def test_sweeping_steps_leave_the_model_and_say_what_their_sweep_costs():
    """The unit counts are those the job's own sweep builds (`sensitivity.magnitude_units` / `structured_units`);
    a later step of the same method reuses the analysis, so its sweep costs nothing."""
    model = residual_functional()
    layers = len(sensitivity.magnitude_units(model, prunable_weights(model)))
    groups = len(sensitivity.structured_units(residual_functional(), criterion="l1"))
    total, nonzero = model.count_params(), counting.param_stats(model)["nonzero"]
    steps = [
        StepTarget("sensitivity", levels=(0.5, 0.9), samples=500),
        StepTarget("budget", levels=(0.3, 0.5, 0.7), max_trials=4, epochs=2),
        StepTarget("budget", method="structured", levels=(0.7, 0.5), max_trials=3, epochs=1),
        StepTarget("prune", target_sparsity=0.5, allocation="sensitivity", levels=(0.3, 0.5, 0.7)),
    ]
    sweep, budget, structured_budget, prune = estimate_steps(model, steps)
    assert sweep["sweep"] == {
        "method": "magnitude",
        "units": layers,
        "levels": 2,
        "evaluations": 2 * layers + 1,
        "samples": 500,
    }
    assert (sweep["params"], sweep["nonzero"]) == (total, nonzero) and "measures only" in sweep["estimate"]
    assert budget["sweep"] is None  # the sensitivity step's analysis is reused
    assert budget["trials_at_most"] == 4 and budget["training_epochs_at_most"] == 8 and budget["nonzero"] == nonzero
    assert (
        structured_budget["sweep"]["units"] == groups > 0
        and structured_budget["sweep"]["evaluations"] == 2 * groups + 1
    )
    assert structured_budget["params"] == total
    assert prune["sweep"] is None and prune["sparsity"] > 0.45  # allocated from the magnitude sweep already made


def test_step_target_keeps_the_fields_it_knows():
    step = StepTarget.of(
        {
            "kind": "prune",
            "method": "block",
            "target_sparsity": 0.5,
            "block_shape": [1, 4],
            "epochs": 3,
            "schedule": None,
        }
    )
    assert step == StepTarget("prune", method="block", target_sparsity=0.5, block_shape=(1, 4), epochs=3)


def test_preflight_without_steps_leaves_the_model_alone():
    model = residual_functional()
    before = [w.copy() for w in model.get_weights()]
    result = preflight(model)
    assert result["steps"] == [] and result["model"] == {"name": "residual", "class": "Functional"}
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert all(v.constraint is None for v in model.weights)  # the pruner's plan left nothing attached


def test_weights_size_gzips_the_weights_and_samples_large_ones(monkeypatch, tmp_path):
    from workers.engine import preflight as preflight_mod

    model = keras.Sequential([keras.Input((64,)), L.Dense(512, name="a"), L.Dense(256, name="b")])
    exact = weights_size(model)
    assert exact["size_bytes"] == 4 * model.count_params()
    assert 0.8 * exact["size_bytes"] < exact["gzip_bytes"] < exact["size_bytes"]  # random floats barely compress
    model.save(tmp_path / "m.keras")
    on_disk = metrics.file_size(tmp_path / "m.keras")
    assert exact["size_bytes"] < on_disk["bytes"]
    assert exact["gzip_bytes"] == pytest.approx(on_disk["gzip_bytes"], rel=0.1)
    monkeypatch.setattr(preflight_mod, "GZIP_SAMPLE_BYTES", 64 * 1024)
    monkeypatch.setattr(preflight_mod, "GZIP_CHUNK_BYTES", 8 * 1024)
    sampled = weights_size(model)
    assert sampled["size_bytes"] == exact["size_bytes"]
    assert sampled["gzip_bytes"] == pytest.approx(exact["gzip_bytes"], rel=0.05)


def test_a_spec_that_prunes_per_layer_spares_no_layer():
    per_layer = preflight(residual_functional(), [StepTarget("prune", target_sparsity=0.5, scope="layer")])
    out = rows(per_layer)["out"]
    assert out["prunable"] and out["reason"] is None and out["spared"] is None
    assert per_layer["steps"][0]["spared"] == []
    ranked = preflight(
        residual_functional(), [StepTarget("prune", target_sparsity=0.5), StepTarget("prune", method="n_m", n=2, m=4)]
    )
    assert rows(ranked)["out"]["reason"].startswith("spared: output layer")
