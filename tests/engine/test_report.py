"""report.html from a manifest: escaping of hostile names, the sections, the budget and sensitivity plots, speed."""

from __future__ import annotations

import base64
import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from tests.engine import manifests
from tests.engine.manifests import HOSTILE
from workers.engine.report import render_report
from workers.engine.report_html import CSP

SVG_NS = "{http://www.w3.org/2000/svg}"


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and the ids and classes, as a browser's parser sees them."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    @property
    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]

    def svgs(self) -> list[ET.Element]:
        """The plots: each <img> is a base64 SVG document, parsed as XML."""
        out = []
        for img in self.all("img"):
            head, _, data = img["src"].partition(",")
            assert head == "data:image/svg+xml;base64"
            out.append(ET.fromstring(base64.b64decode(data)))
        return out


def svg_text(svg: ET.Element) -> str:
    return " ".join("".join(t.itertext()) for t in svg.iter(f"{SVG_NS}text"))


def assert_inert(page: Page) -> None:
    """No script, no event handler, nothing loaded from anywhere: every URL in the page is a data: URL."""
    assert not page.all("script") and not page.all("iframe") and not page.all("object")
    for tag, attrs in page.tags:
        assert not [k for k in attrs if k.startswith("on")], (tag, attrs)
        for k in ("src", "href", "action", "srcset", "poster", "data"):
            if k in attrs:
                assert attrs[k].startswith("data:"), (tag, k, attrs[k])
    for svg in page.svgs():
        assert not list(svg.iter(f"{SVG_NS}script")) and not list(svg.iter(f"{SVG_NS}foreignObject"))
        for el in svg.iter():
            for k, v in el.attrib.items():
                assert not k.startswith("on")
                if k.endswith("href"):
                    assert v.startswith("#"), (el.tag, k, v)  # internal references only


def test_a_hostile_layer_name_is_text_in_the_page_and_in_the_plots():
    names = ("conv", HOSTILE, "predictions")
    m = manifests.manifest(names)
    m["budget"] = manifests.budget()
    m["inputs"]["model"]["file"] = HOSTILE
    html = render_report(m, manifests.sensitivity(names))
    assert "<script" not in html.lower() and "onerror=" not in html.replace("onerror=alert", "")
    page = Page(html)
    assert_inert(page)
    text = "".join(page.text)
    assert text.count(HOSTILE) == 3  # the title, the subtitle (as the model's file name) and the sensitivity table
    plotted = " ".join(svg_text(s) for s in page.svgs())
    assert '<script>alert("x")</script>' in plotted  # as XML text, cut to a label's length, "$" kept literally
    assert "\x01" not in plotted


def test_the_page_holds_the_verdict_the_tables_and_the_layer_and_training_plots():
    m = manifests.manifest()
    page = Page(render_report(m))
    assert {"verdict", "before-after", "artifacts", "layers", "training"} <= page.ids
    assert not {"budget", "sensitivity"} & page.ids
    text = "".join(page.text)
    assert "Win: the model is smaller." in text
    assert "92.00% → 91.00% (-1.0 points; within the tolerance 5.0 points)" in text
    assert "160.0 kB to 40.0 kB (75% smaller)" in text
    assert "1.25× faster; a speed win" in text and "1.25× faster; not claimed" in text
    assert "unstructured sparsity only" in text  # the summary's notes
    tables = page.all("table")
    assert len(tables) == 4  # before/after, files, skipped layers, steps
    for row in (
        "held-out accuracy",
        "non-zero parameters",
        "MACs per sample",
        ".keras size gzipped",
        "CPU latency, batch 32 (median ms, p25–p75)",
        "model.tflite",
        "float32, sparse kernels",
    ):
        assert row in text, row
    svgs = page.svgs()
    assert len(svgs) == 3
    titles = [svg_text(s) for s in svgs]
    assert "Sparsity per layer" in titles[0] and "Kept width per layer" in titles[1]
    assert "6/8" in titles[1]  # the kept/before label of the first structured layer
    assert "loss" in titles[2] and "accuracy" in titles[2] and "3. finetune" in titles[2]
    metas = {a.get("http-equiv"): a.get("content") for a in page.all("meta")}
    assert metas["Content-Security-Policy"] == CSP and "name" in page.all("meta")[1]  # viewport
    assert_inert(page)


def test_a_collapse_is_the_headline_in_red_with_the_summary_note_first():
    page = Page(render_report(manifests.manifest(collapsed=True)))
    verdict = next(a for a in page.all("section") if a.get("id") == "verdict")
    assert verdict["class"].split() == ["verdict", "bad"]
    text = "".join(page.text)
    assert "No win: the held-out quality fell beyond the tolerance." in text
    assert "QUALITY COLLAPSED" in text and "beyond the tolerance 5.0 points" in text


def test_a_manifest_without_data_latency_or_steps_still_renders():
    m = manifests.manifest()
    for side in ("before", "after"):
        m[side]["evaluation"] = None
        del m[side]["latency_ms"]
    m["steps"], m["summary"]["quality"], m["summary"]["within_tolerance"] = [], {}, None
    m["summary"]["latency_speedup"] = {}
    page = Page(render_report(m))
    text = "".join(page.text)
    assert "quality of the compressed model was not checked" in text and "not measured" in text
    assert "training" not in page.ids
    assert ["Sparsity per layer" in svg_text(s) for s in page.svgs()] == [True]  # read from the params


@pytest.mark.parametrize("chosen", [2, {"level": 0.8, "metric": 0.91}, 0.8], ids=["index", "trial", "level"])
def test_a_budget_draws_the_pareto_front_with_the_chosen_trial_starred(chosen):
    m = manifests.manifest()
    m["budget"] = manifests.budget(chosen=chosen)
    page = Page(render_report(m))
    assert "budget" in page.ids
    rows = [a for a in page.all("tr") if a.get("class") == "chosen"]
    assert len(rows) == 1
    text = "".join(page.text)
    assert "objective size: met; chose level 0.8 (91.00%" in text and "after 4 trials" in text
    pareto = next(s for s in page.svgs() if "Pareto front" in svg_text(s))
    labels = svg_text(pareto)
    assert "chosen" in labels and "within budget" in labels and "over budget" in labels
    assert "budget limit 0.9" in labels and "baseline 0.92" in labels  # 0.92 - 0.02
    assert "held-out accuracy at most 2.0 points below the baseline 92.00%" in text
    assert "pruned at once" in page.text and "kept" in page.text  # the trial table's columns
    assert "fine-tuned" in text and "81.00%" in text  # trial 0.7: 91.00% fine-tuned, 81.00% pruned at once


def test_a_budget_on_a_loss_puts_its_limit_above_the_baseline():
    m = manifests.manifest()
    b = manifests.budget(metric="loss", chosen=None)
    b["baseline"] = 0.3
    for t in b["trials"]:
        t["metric"] = 0.3 + t["drop"]  # drop = metric - baseline for a loss
    m["budget"] = b
    page = Page(render_report(m))
    labels = svg_text(next(s for s in page.svgs() if "Pareto front" in svg_text(s)))
    assert "budget limit 0.32" in labels and "chosen" not in labels.split()
    assert "held-out loss at most 0.02 above the baseline" in "".join(page.text)


def test_the_steps_table_shows_each_batchnorm_re_estimation_before_and_after():
    page = Page(render_report(manifests.manifest()))
    cells = [t.strip() for t in page.text if t.strip()]
    row = cells[cells.index("prune") - 1 : cells.index("prune") + 5]  # step 1: its record has 50% -> 90%
    assert row == ["1", "prune", "3", "80.0%", "50.00% → 90.00%", "3.5 s"]


def test_test_arrays_get_their_own_rows_sentences_and_budget_line():
    m = manifests.manifest()
    m["before"]["test_evaluation"] = {"accuracy": 0.93, "loss": 0.28}
    m["after"]["test_evaluation"] = {"accuracy": 0.905, "loss": 0.36}
    m["summary"]["quality_test"] = {
        "accuracy": {"before": 0.93, "after": 0.905, "change": -0.025, "kind": "accuracy", "max_drop": 0.05, "ok": True}
    }
    m["budget"] = manifests.budget(chosen=2)
    m["budget"]["test"] = {"baseline": 0.93, "metric": 0.905, "drop": 0.025, "within_budget": False}
    m["inputs"]["data"]["test_samples"] = 1000
    page = Page(render_report(m))
    text = "".join(page.text)
    assert "held-out samples, 1,000 test samples" in text
    assert "test accuracy" in page.text and "test loss" in page.text  # the before / after rows
    assert "Test accuracy: 93.00% → 90.50%" in text and "Held-out accuracy" in text
    assert "On the test data, which the search never saw: 93.00% → 90.50% (beyond the budget)." in text


def test_sensitivity_curves_and_table_when_given():
    names = tuple(f"block_{i}" for i in range(12))
    page = Page(render_report(manifests.manifest(names), manifests.sensitivity(names)))
    assert "sensitivity" in page.ids
    sens = next(s for s in page.svgs() if "drop in held-out accuracy" in svg_text(s))
    labels = svg_text(sens)
    assert "8 most sensitive of 12" in labels and "block_11" in labels and "block_0 " not in labels + " "
    text = "".join(page.text)
    assert "drop at 0.9" in text
    order = [t for t in page.text if re.fullmatch(r"block_\d+", t)]
    assert order[:2] == ["block_11", "block_10"]  # the sensitivity table is sorted, most sensitive first


def test_the_sensitivity_can_come_from_the_manifest():
    m = manifests.manifest()
    m["sensitivity"] = manifests.sensitivity()
    assert "sensitivity" in Page(render_report(m)).ids


def test_the_same_manifest_gives_the_same_bytes():
    m = manifests.manifest()
    assert render_report(m) == render_report(m)


def test_a_big_model_with_budget_and_sensitivity_renders_within_two_seconds():
    names = tuple(f"stage_{i // 10}/block_{i}/conv" for i in range(120))
    m = manifests.manifest(names)
    m["budget"] = manifests.budget()
    sens = manifests.sensitivity(names)
    render_report(manifests.manifest())  # matplotlib's import and font cache are not the report's cost
    cpu, wall = time.process_time(), time.perf_counter()
    page = Page(render_report(m, sens))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert cpu < 2.0, f"{cpu:.2f} s of CPU ({wall:.2f} s wall) to render a 120-layer report"
    assert len(page.svgs()) == 5
