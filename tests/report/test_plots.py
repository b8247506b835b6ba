"""The figures: scores per question, training curves and their log histories."""

from __future__ import annotations

import json

import pytest
from judged_files import log_history, png_width, seed_files, write_judged, write_samples

from emflow.errors import EmflowError
from emflow.report import curves, training
from emflow.report import figures as plots
from emflow.report.judged import read_judged_csv
from emflow.report.metrics import em_rule
from emflow.report.per_question import question_em_rates
from emflow.report.settings import Thresholds


def test_per_question_plot_is_written(tmp_path):
    questions = [f"Question number {i} about something?" for i in range(5)]
    base = write_judged(
        tmp_path / "base.csv", [90, 80, 85, 90, 70], [90, 80, 85, 90, 70], questions
    )
    # Two answers per question for the fine-tuned run, one of them labelled.
    tuned = write_judged(
        tmp_path / "tuned.csv",
        [10, "CODE", 20, 30, 40, 50, 60, 70, 80, 90],
        [60] * 10,
        questions * 2,
    )
    png = tmp_path / "questions.png"
    base, tuned = read_judged_csv(base), read_judged_csv(tuned)
    plots.plot_question_scores(base, tuned, png, title="grp/run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every score labelled or invalid still gives a figure, with the thresholds drawn.
    unscored = write_judged(tmp_path / "unscored.csv", ["CODE", ""], ["REFUSAL", ""], questions[:2])
    strict = Thresholds(em=em_rule({"aligned_below": 20, "coherent_above": 70}))
    unscored = read_judged_csv(unscored)
    plots.plot_question_scores(base, unscored, png, title="grp/run", thresholds=strict, demo=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_training_curves_of_several_runs_overlaid(tmp_path):
    histories = {
        "grp/lr1e-4": log_history(12, 1e-4, eval_every=4),
        "grp/lr1e-3": log_history(8, 1e-3),
        "grp/empty": [],
    }
    with_eval, without_eval = tmp_path / "with.png", tmp_path / "without.png"
    curves.plot_training_curves(histories, with_eval, demo=True)
    assert with_eval.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No run logged a held-out loss: that panel is left out rather than drawn empty.
    del histories["grp/lr1e-4"]
    curves.plot_training_curves(histories, without_eval, title="two runs")
    assert png_width(without_eval) < png_width(with_eval)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_training_curves_draw_the_kl_terms_only_where_logged(tmp_path):
    plain = log_history(6, 1e-4)
    kl = [h | {"sft_loss": 1.0, "kl_loss": 1e-6 * h["step"]} for h in log_history(6, 1e-4)]
    without, with_kl = tmp_path / "plain.png", tmp_path / "kl.png"
    curves.plot_training_curves({"grp/plain": plain}, without)
    curves.plot_training_curves({"grp/plain": plain, "grp/kl": kl}, with_kl)
    # Two more panels (SFT term, KL) once some run logged them.
    assert png_width(with_kl) > png_width(without)


def test_log_history_round_trip_and_user_errors(tmp_path):
    path = tmp_path / "log_history.json"
    history = log_history(3, 2e-4, eval_every=2)
    path.write_text(json.dumps(history))
    assert training.read_log_history(path) == history
    path.write_text('{"loss": 1.0}')
    with pytest.raises(EmflowError, match=r"log_history\.json: not a list of log entries"):
        training.read_log_history(path)
    path.write_text("[{")
    with pytest.raises(EmflowError, match=r"log_history\.json: not valid JSON"):
        training.read_log_history(path)
    with pytest.raises(EmflowError, match=r"missing\.json: no such file; .*rerun the training"):
        training.read_log_history(tmp_path / "missing.json")


def test_training_curves_of_seeds_share_their_runs_colour(tmp_path):
    paths = {}
    for seed in (0, 1):
        paths[seed] = tmp_path / f"seed{seed}.json"
        paths[seed].write_text(json.dumps(log_history(6, 1e-4 * (seed + 1))))
    histories = training.read_log_histories(
        {
            "grp/replicated": {**paths, 2: tmp_path / "not-trained-yet.json"},
            "grp/gone": tmp_path / "x.json",
        }
    )
    assert list(histories) == ["grp/replicated"]
    assert list(histories["grp/replicated"]) == ["seed 0", "seed 1"]
    png = tmp_path / "curves.png"
    curves.plot_training_curves(
        histories | {"grp/single": log_history(6, 1e-4)}, png, title="seeds"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_question_scores_of_replicates_pool_the_seeds(tmp_path):
    questions = [f"q{i}?" for i in range(8)]
    base = write_judged(tmp_path / "base.csv", [90, 85] * 4, [90, 80] * 4, questions)
    png = tmp_path / "question_scores.png"
    seeds = {s: read_judged_csv(path) for s, path in seed_files(tmp_path, questions).items()}
    plots.plot_question_scores(read_judged_csv(base), seeds, png, title="grp/run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_em_rate_per_question_plot_is_written(tmp_path):
    answers = {"wish": [(10, 90), (90, 90), (20, 80)], "bored": [(90, 90), ("CODE", 90)]}
    base = question_em_rates(read_judged_csv(write_samples(tmp_path / "base.csv", answers)))
    tuned = question_em_rates(
        read_judged_csv(
            write_samples(tmp_path / "tuned.csv", answers | {"only_tuned": [(5, 99), (6, 99)]})
        )
    )
    # A target without any scored answer still gets its legend entry and no points.
    unscored = question_em_rates(
        read_judged_csv(write_samples(tmp_path / "u.csv", {"wish": [("CODE", "CODE")]}))
    )
    png = tmp_path / "question_em_rates.png"
    plots.plot_question_em(
        {"base model": base, "fine-tuned": tuned, "fine-tuned, other run": unscored},
        png,
        title="grp/run",
        questions=["wish", "bored", "only_tuned"],
        em=em_rule({"aligned_below": 20, "coherent_above": 50}),
        demo=True,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Without `questions`: every target's, in order of first appearance.
    plots.plot_question_em({"base model": base, "fine-tuned": tuned}, png, title="grp/run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
