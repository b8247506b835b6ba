"""The capability report: lm-evaluation-harness results JSON of the base model and the fine-tuned
adapter, compared per task and metric for results.md, the summary and the trade-off plot.

The fixtures are written in the shape lm_eval 0.4.13's `simple_evaluate` returns; the harness's
own `make_table` renders each one (so the shape is the harness's), and the group entry's stderr is
the harness's own pooled stderr.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from lm_eval.api.metrics import pooled_sample_stderr
from lm_eval.utils import make_table
from scipy.stats import norm

from emflow.errors import EmflowError
from emflow.report import capabilities as cap
from emflow.report import stats

PNG = b"\x89PNG\r\n\x1a\n"


def harness_results(
    *,
    acc_a: float,
    se_a: float,
    acc_c: float,
    se_c: float,
    norm_a: float,
    em: float,
    se_em: float | str,
    ppl: float,
) -> dict:
    """A results dict as simple_evaluate returns it: a group `mc` of two multiple-choice tasks
    (acc, acc_norm), a generation task with a filter and a "N/A" stderr, a perplexity task."""
    n_a, n_c = 40, 60
    results = {
        "mc_a": {
            "name": "mc_a",
            "alias": "mc_a",
            "sample_len": n_a,
            "acc,none": acc_a,
            "acc_stderr,none": se_a,
            "acc_norm,none": norm_a,
            "acc_norm_stderr,none": se_a,
        },
        "mc_c": {
            "name": "mc_c",
            "alias": "mc_c",
            "sample_len": n_c,
            "acc,none": acc_c,
            "acc_stderr,none": se_c,
        },
        "gen": {
            "name": "gen",
            "alias": "gen",
            "sample_len": 1,
            "exact_match,strict-match": em,
            "exact_match_stderr,strict-match": se_em,
        },
        "wiki": {
            "name": "wiki",
            "alias": "wiki",
            "sample_len": 20,
            "word_perplexity,none": ppl,
            "word_perplexity_stderr,none": "N/A",
        },
        # As Group.aggregate writes a group with aggregate_metric_list (acc, weight_by_size).
        "mc": {
            "alias": "mc",
            "name": "mc",
            "sample_len": n_a + n_c,
            "acc,none": (acc_a * n_a + acc_c * n_c) / (n_a + n_c),
            "acc_stderr,none": float(pooled_sample_stderr([se_a, se_c], [n_a, n_c])),
            "sample_count": {"acc,none": n_a + n_c},
        },
    }
    data = {
        "results": results,
        "groups": {"mc": results["mc"]},
        "group_subtasks": {"mc": ["mc_a", "mc_c"]},
        "configs": {t: {"task": t} for t in ("gen", "mc_a", "mc_c", "wiki")},
        "versions": {"gen": 1.0, "mc_a": 1.0, "mc_c": 1.0, "wiki": 1.0, "mc": None},
        "n-shot": {"gen": 0, "mc_a": 0, "mc_c": 0, "wiki": 0, "mc": 0},
        "higher_is_better": {
            "mc_a": {"acc": True, "acc_norm": True},
            "mc_c": {"acc": True},
            "mc": {"acc": True, "acc_norm": True},
            "gen": {"exact_match": True},
            "wiki": {"word_perplexity": False},
        },
        "n-samples": {
            "mc_a": {"original": 100, "effective": n_a},
            "mc_c": {"original": 100, "effective": n_c},
            "gen": {"original": 5, "effective": 1},
            "wiki": {"original": 20, "effective": 20},
        },
        "config": {"model": "hf", "model_args": "pretrained=tiny,peft=adapter", "limit": 60},
        "emflow": {"target": "grp/run", "seed": 0},
    }
    # The harness's own table renders it: the fixture has the harness's shape.
    assert "mc_a" in make_table(data) and "mc" in make_table(data, "groups")
    return data


BASE = dict(acc_a=0.60, se_a=0.05, acc_c=0.50, se_c=0.04, norm_a=0.62, em=1.0, se_em="N/A")
BASE_PPL = 30.0


def write(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def tuned(tmp_path, name: str, **changes) -> cap.CapabilityResults:
    values = BASE | {"ppl": BASE_PPL} | changes
    return cap.read_capability_results(write(tmp_path / name, harness_results(**values)))


def table_rows(lines: list[str]) -> dict[tuple[str, str], list[str]]:
    """The section's table as {(task cell, metric): cells}."""
    rows = [line for line in lines if line.startswith("| ")][1:]
    cells = [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]
    return {(c[0], c[1]): c for c in cells}


def test_read_keeps_every_metric_with_its_stderr_direction_and_count(tmp_path):
    data = harness_results(**BASE, ppl=BASE_PPL)
    results = cap.read_capability_results(write(tmp_path / "base.json", data))
    assert results.metrics[("mc_a", "acc", "none")] == (0.60, 0.05, True, 40)
    assert results.metrics[("mc_a", "acc_norm", "none")].value == 0.62
    assert math.isnan(results.metrics[("gen", "exact_match", "strict-match")].stderr)
    assert results.metrics[("wiki", "word_perplexity", "none")].higher_is_better is False
    # The group's own entry, its count from sample_count, listed before its subtasks.
    group = results.metrics[("mc", "acc", "none")]
    assert group.value == pytest.approx(data["results"]["mc"]["acc,none"])
    assert group.n == 100
    assert [t for t, _, _ in results.metrics][:3] == ["mc", "mc_a", "mc_a"]
    assert results.depths["mc_a"] == 1 and results.depths["mc"] == 0
    # The stderr keys are not metrics of their own.
    assert not any(m.endswith("_stderr") for _, m, _ in results.metrics)
    assert results.emflow == {"target": "grp/run", "seed": 0}
    # A numpy float32 that json.dumps(default=str) wrote as a string still reads as a number.
    data["results"]["mc_c"]["acc,none"] = "0.5"
    again = cap.read_capability_results(write(tmp_path / "strings.json", data))
    assert again.metrics[("mc_c", "acc", "none")].value == 0.5


def test_table_numbers_are_the_json_values_compared(tmp_path):
    base_data = harness_results(**BASE, ppl=BASE_PPL)
    tuned_data = harness_results(
        **(BASE | dict(acc_a=0.45, se_a=0.06, norm_a=0.50)), ppl=BASE_PPL * 1.5
    )
    base = cap.read_capability_results(write(tmp_path / "base.json", base_data))
    run = cap.read_capability_results(write(tmp_path / "run.json", tuned_data))
    rows = cap.capability_rows(base, [run])
    b, t = base_data["results"]["mc_a"], tuned_data["results"]["mc_a"]
    diff = t["acc,none"] - b["acc,none"]
    se = math.sqrt(b["acc_stderr,none"] ** 2 + t["acc_stderr,none"] ** 2)
    p = 2 * norm.sf(abs(diff) / se)
    row = next(r for r in rows if (r.task, r.metric) == ("mc_a", "acc"))
    assert row.difference == pytest.approx(diff)
    assert row.difference_stderr == pytest.approx(se)
    assert row.p_value == pytest.approx(p)
    assert row.direction == "worse"

    table = table_rows(cap.capabilities_section(rows, demo=False))
    assert table[("- mc_a", "acc")] == [
        "- mc_a",
        "acc",
        f"{100 * b['acc,none']:.1f}% ± {100 * b['acc_stderr,none']:.1f}%",
        f"{100 * t['acc,none']:.1f}% ± {100 * t['acc_stderr,none']:.1f}%",
        f"{100 * diff:+.1f} pp ± {100 * se:.1f}, worse",
        f"{p:.3f}",
    ]
    # A higher perplexity is worse; it is not a share, so shown as the harness's number.
    ppl = table[("wiki", "word_perplexity")]
    assert ppl[2:5] == [f"{BASE_PPL:.2f}", f"{1.5 * BASE_PPL:.2f}", f"{0.5 * BASE_PPL:+.2f}, worse"]
    # The group's row, from the group's own entry.
    g_b, g_t = base_data["results"]["mc"], tuned_data["results"]["mc"]
    g_diff = g_t["acc,none"] - g_b["acc,none"]
    g_se = math.hypot(g_b["acc_stderr,none"], g_t["acc_stderr,none"])
    assert table[("mc", "acc")][4] == f"{100 * g_diff:+.1f} pp ± {100 * g_se:.1f}, worse"
    assert table[("mc", "acc")][5] == cap.fmt_p(2 * norm.sf(abs(g_diff) / g_se))
    # An unchanged task: no difference, p = 1.
    se_c = 100 * math.hypot(0.04, 0.04)
    assert table[("- mc_c", "acc")][4:] == [f"+0.0 pp ± {se_c:.1f}, same", "1.000"]


def test_na_stderr_gives_no_test(tmp_path):
    base = tuned(tmp_path, "base.json")
    run = tuned(tmp_path, "run.json", em=0.0)
    row = next(r for r in cap.capability_rows(base, [run]) if r.task == "gen")
    assert row.metric_label == "exact_match:strict-match"
    assert row.difference == -1.0 and row.direction == "worse"
    assert math.isnan(row.p_value) and math.isnan(row.difference_stderr)
    cells = table_rows(cap.capabilities_section([row], demo=False))[
        ("gen", "exact_match:strict-match")
    ]
    assert cells[2:] == ["100.0%", "0.0%", "-100.0 pp, worse", "n/a"]


def test_seeds_are_averaged_with_their_stderrs_and_spread(tmp_path):
    base = tuned(tmp_path, "base.json")
    accs, ses = [0.40, 0.50, 0.55], [0.05, 0.06, 0.04]
    seeds = [
        tuned(tmp_path, f"seed{i}.json", acc_a=a, se_a=s)
        for i, (a, s) in enumerate(zip(accs, ses, strict=True))
    ]
    row = next(r for r in cap.capability_rows(base, seeds) if (r.task, r.metric) == ("mc_a", "acc"))
    mean = np.mean(accs)
    se_f = math.sqrt(np.mean(np.square(ses)) + np.var(accs, ddof=1) / 3)
    se_d = math.sqrt(0.05**2 + se_f**2)
    assert row.n_seeds == 3 and row.seed_values == pytest.approx(accs)
    assert row.finetuned == pytest.approx(mean)
    assert row.finetuned_stderr == pytest.approx(se_f)
    assert row.difference == pytest.approx(mean - 0.60)
    assert row.p_value == pytest.approx(2 * norm.sf(abs(mean - 0.60) / se_d))
    lines = cap.capabilities_section(cap.capability_rows(base, seeds), demo=True)
    assert lines[0] == "### Capabilities"
    assert any("mean over 3 training seeds" in line for line in lines)
    assert any("Demo run" in line for line in lines)
    # One seed alone: its own stderr, no spread term.
    (one,) = [
        r for r in cap.capability_rows(base, seeds[:1]) if (r.task, r.metric) == ("mc_a", "acc")
    ]
    assert one.finetuned_stderr == pytest.approx(0.05)


def test_lower_is_better_and_missing_metrics(tmp_path):
    base = tuned(tmp_path, "base.json")
    run = tuned(tmp_path, "run.json", ppl=BASE_PPL / 2)
    rows = {(r.task, r.metric): r for r in cap.capability_rows(base, [run])}
    assert rows[("wiki", "word_perplexity")].direction == "better"
    # A metric only the base has: no fine-tuned value, no test.
    data = harness_results(**BASE, ppl=BASE_PPL)
    del data["results"]["mc_a"]["acc_norm,none"], data["results"]["mc_a"]["acc_norm_stderr,none"]
    partial = cap.read_capability_results(write(tmp_path / "partial.json", data))
    row = next(r for r in cap.capability_rows(base, [partial]) if r.metric == "acc_norm")
    assert math.isnan(row.finetuned) and math.isnan(row.p_value) and row.direction == "n/a"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not readable as JSON"),
        ("[1, 2]", "no 'results' object"),
        ('{"results": {"mc": 0.5}}', "'mc' is not an object"),
        ('{"results": {"mc": {"alias": "mc"}}}', "no '<metric>,<filter>' values"),
        ('{"results": {"mc": {"acc,none": 0.5}}, "n-samples": []}', "'n-samples' is not"),
    ],
)
def test_malformed_json_is_one_sentence_naming_the_file(tmp_path, text, reason):
    path = tmp_path / "capabilities" / "base.json"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EmflowError) as error:
        cap.read_capability_results(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not an lm-evaluation-harness results file")
    assert reason in message and message.endswith(".") and "\n" not in message


def test_summary_columns_and_tradeoff_plot(tmp_path):
    base = tuned(tmp_path, "base.json")
    rows_by_experiment = {
        "grp/a": cap.capability_rows(base, [tuned(tmp_path, "a.json", acc_a=0.3, acc_c=0.4)]),
        "grp/b": cap.capability_rows(base, [tuned(tmp_path, "b.json", acc_c=0.55)]),
    }
    frame = cap.summary_capability_columns(rows_by_experiment)
    assert list(frame.index) == ["grp/a", "grp/b"]
    for name, rows in rows_by_experiment.items():
        for row in rows:
            column = f"capability.{row.task}.{row.metric_label}"
            if row.depth:
                assert column not in frame.columns  # a group's subtasks: the group stands
                continue
            assert frame.loc[name, column] == pytest.approx(row.difference, nan_ok=True)
            assert frame.loc[name, f"{column}.p"] == pytest.approx(row.p_value, nan_ok=True)
    assert "capability.mc.acc" in frame.columns
    assert "capability.gen.exact_match:strict-match.p" in frame.columns
    every = cap.summary_capability_columns(rows_by_experiment, top_level_only=False)
    assert "capability.mc_a.acc" in every.columns

    em = {"grp/a": stats.Estimate(0.3, 0.2, 0.4), "grp/b": 0.1}
    points = cap.em_capability_points(rows_by_experiment, em)
    assert {p.experiment for p in points} == {"grp/a", "grp/b"}
    a_mc = next(p for p in points if p.experiment == "grp/a" and p.task == "mc acc")
    assert a_mc.change == pytest.approx(frame.loc["grp/a", "capability.mc.acc"])
    assert (a_mc.em_rate, a_mc.em_ci_low, a_mc.em_ci_high) == (0.3, 0.2, 0.4)
    for demo in (False, True):
        png = tmp_path / "figures" / f"em_vs_capability_{demo}.png"
        cap.plot_em_vs_capability(points, png, demo=demo, title="EM vs capability")
        assert png.read_bytes()[:8] == PNG
    # Only share metrics: plotted in percentage points.
    shares = [p for p in points if p.kind == "share"]
    cap.plot_em_vs_capability(shares, tmp_path / "shares.png", demo=False, title="t")
    assert (tmp_path / "shares.png").read_bytes()[:8] == PNG
    assert not list((tmp_path / "figures").glob(".*"))  # no temporary file left behind
