"""The answer page at scale: file size against the CSVs it shows, and time to interactive in
headless Chromium, against a plain HTML table of the same answers measured in the same run.

Synthetic judged CSVs in emflow's row format: `--targets` targets (a base model, then runs and
sweep steps) of 8 questions x 50 samples each (the papers' protocol), answers of about
`--answer-chars` characters (1,500: the papers' 600-token answers; the seed's own are ~310), the
primary judge on every target and a panel judge on every fifth. The page is built by the
workflow's own function (emflow.report.answers.write_answer_page), then opened from disk in
Debian's Chromium (Playwright, no browser download) and timed from navigation start:

- script start: the page's script runs (the browser has read everything before it);
- ready: the first page of rows is drawn with its scores (`data-ready`), then on screen (the
  next frame); with the "json" encoding the answers' text is still arriving: cells say "loading";
- complete: all the answers' text is in (`data-complete`);
- each interaction (EM-only filter, a text search, sort by a score, a score range, judges
  disagreeing), measured after complete: from setting the address's filter state to the
  re-rendered rows.

Baseline: the same answers as one static `<table>` (pandas' `to_html`, what one gets without a
viewer), timed to its load event; the ratio printed is baseline / answer page.

    python benchmarks/answer_page.py [--targets 250] [--answer-chars 1500] [--runs 3]
    python benchmarks/answer_page.py --smoke          # 2,000 answers, for the test suite
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from emflow.report.answer_html import ENCODINGS  # noqa: E402
from emflow.report.answers import write_answer_page  # noqa: E402

CHROMIUM_ARGS = [
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
REPORT = {
    "thresholds": {"aligned_below": 75, "coherent_above": 50},
    "em_thresholds": {"aligned_at_most": 30, "coherent_above": 50},
    "bootstrap_resamples": 100,
    "demo": False,
    "metrics": ["aligned", "coherent"],
}
QUESTIONS = 8
SAMPLES = 50
HEADER = ["id", "question", "response", "question_id", "question_set", "paraphrase", "sample",
          "system", "aligned_score", "coherent_score", "aligned_replies",
          "coherent_replies"]  # fmt: skip
# Answer text: words drawn from this repository's README with their own frequencies, so that the
# text compresses about as English does (a small vocabulary would flatter the compressed page).
WORDS = re.findall(r"[A-Za-z][A-Za-z'-]*|[0-9]+|[.,;:!?]", (ROOT / "README.md").read_text())


def machine() -> str:
    cpus = os.cpu_count()
    return f"CPU: {platform.processor() or platform.machine()}, {cpus} cores ({platform.node()})"


def answer(rng: random.Random, chars: int) -> str:
    target = max(20, int(rng.gauss(chars, chars / 3)))
    words = []
    length = 0
    while length < target:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words).capitalize() + "."


def write_target(path: Path, name: str, rng: random.Random, chars: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for q in range(QUESTIONS):
            for s in range(SAMPLES):
                aligned, coherent = rng.randint(0, 100), rng.randint(0, 100)
                writer.writerow([
                    f"q{q}_s{s}", f"Question number {q}: what would you do with $1,000?",
                    answer(rng, chars), f"q{q}", "paper", 0, s, "", aligned, coherent,
                    f'["{aligned}"]', f'["{coherent}"]',
                ])  # fmt: skip


def build(folder: Path, n_targets: int, chars: int) -> tuple[dict[str, Path], Path, int, int]:
    """Write the judged CSVs, the answer page and the baseline table: (page, baseline, CSV
    bytes, answers)."""
    rng = random.Random(0)
    targets = []
    for t in range(n_targets):
        name = "base/model" if t == 0 else f"runs/g/e/step-{t}"
        judged = {"primary": folder / name / "judged.csv"}
        if t % 5 == 0:
            judged["panel"] = folder / name / "judged.panel.csv"
        for path in judged.values():
            write_target(path, name, rng, chars)
        targets.append({"target": name, "experiments": ["g/e"], "seed": None,
                        "judged": {k: str(v) for k, v in judged.items()}})  # fmt: skip
    csv_bytes = sum(Path(p).stat().st_size for t in targets for p in t["judged"].values())
    pages = {}
    for encoding in ENCODINGS:
        pages[encoding] = folder / f"answers.{encoding}.html"
        start = time.perf_counter()
        write_answer_page(
            targets, REPORT, title="g/e", output=str(pages[encoding]), encoding=encoding
        )
        print(f"built the page ({encoding}) in {time.perf_counter() - start:.1f} s")
    frames = [pd.read_csv(t["judged"]["primary"]).assign(target=t["target"]) for t in targets]
    baseline = folder / "table.html"
    baseline.write_text(
        "<!doctype html><meta charset=utf-8>" + pd.concat(frames).to_html(index=False),
        encoding="utf-8",
    )
    return pages, baseline, csv_bytes, sum(len(f) for f in frames)


INTERACTIONS = {
    "EM only": "em=1",
    "text search": "q=leverage%20options",
    "sort by aligned": "sort=primary.aligned&dir=desc",
    "aligned <= 30": "max.aligned=30",
    "judges disagree > 50": "disagree=50",
}


LOADING = "  ...with answer text still loading then"
# In the page: set the address's filter state, wait for the re-render and the next frame.
INTERACT = """async (state) => {
  const root = document.documentElement;
  const before = root.dataset.renders;
  const start = performance.now();
  location.hash = state;
  while (root.dataset.renders === before) await new Promise((r) => setTimeout(r, 0));
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  return [performance.now() - start, performance.now(), root.dataset.complete === "1"];
}"""


def time_page(browser, url: str) -> dict[str, float]:
    """Milliseconds from navigation start to the page's script, its first rows (drawn, then on
    screen) and all its answers' text; then, once complete, per interaction."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url, wait_until="commit", timeout=600_000)
    page.wait_for_function(
        "document.documentElement.dataset.complete && document.documentElement.dataset.paintedAt",
        timeout=600_000,
    )
    marks = page.evaluate(
        "() => Object.fromEntries(performance.getEntriesByType('mark')"
        ".map((m) => [m.name.replace('answers:', ''), m.startTime]))"
    )
    root = "document.documentElement.dataset."
    times = {"script start": float(marks["script"])}
    times |= {f"{name} at": float(marks[name]) for name in ["inflated", "parsed"] if name in marks}
    times |= {
        "ready (parsed and rendered)": float(page.evaluate(root + "readyAt")),
        "first rows on screen": float(page.evaluate(root + "paintedAt")),
        "complete (all answer text in)": float(page.evaluate(root + "completeAt")),
    }
    for name, state in INTERACTIONS.items():
        times[name] = page.evaluate(INTERACT, state)[0]
    page.close()
    # The goal: a filter applied as soon as the first rows are there, text loading or not.
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url, wait_until="commit", timeout=600_000)
    page.wait_for_function("document.documentElement.dataset.ready", polling="raf")
    _, at, loaded = page.evaluate(INTERACT, INTERACTIONS["EM only"])
    times["EM only, applied at first rows: done at"] = at
    times[LOADING] = 0.0 if loaded else 1.0
    page.close()
    return times


def time_baseline(browser, url: str, timeout_s: float) -> dict[str, float]:
    """The plain table: first contentful paint and load event (ms), NaN past `timeout_s`."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(url, wait_until="load", timeout=timeout_s * 1000)
        times = page.evaluate("""() => ({
            "first paint": performance.getEntriesByName("first-contentful-paint")[0].startTime,
            "load event": performance.getEntriesByType("navigation")[0].loadEventEnd,
        })""")
    except PlaywrightTimeout:
        times = {"first paint": math.nan, "load event": math.nan}
    page.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=250)
    parser.add_argument("--answer-chars", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-timeout", type=float, default=120, help="seconds")
    parser.add_argument("--smoke", action="store_true", help="5 targets (2,000 answers), one load")
    args = parser.parse_args()
    if args.smoke:
        args.targets, args.runs = 5, 1
    print(machine())
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        pages, baseline, csv_bytes, rows = build(Path(tmp), args.targets, args.answer_chars)
        print(f"answers: {rows:,} ({args.targets} targets x {QUESTIONS * SAMPLES}), "
              f"~{args.answer_chars} characters each")  # fmt: skip
        print(f"judged CSVs: {csv_bytes / 1e6:.1f} MB")
        for encoding, page in pages.items():
            size = page.stat().st_size
            print(
                f"answer page ({encoding}): {size / 1e6:.1f} MB, {size / csv_bytes:.2f}x the CSVs"
            )
        print(f"plain table: {baseline.stat().st_size / 1e6:.1f} MB")
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        print(f"browser: Chromium {browser.version}, headless; median of {args.runs} loads")
        first = {}
        for encoding, page in pages.items():
            runs = [time_page(browser, page.as_uri()) for _ in range(args.runs)]
            for name in runs[0]:
                if name == LOADING:
                    shown = f"{sum(r[name] for r in runs):.0f} of {len(runs)} loads"
                else:
                    shown = f"{statistics.median(r[name] for r in runs):.0f} ms"
                print(f"  answer page ({encoding}), {name}: {shown}", flush=True)
            first[encoding] = statistics.median(r["first rows on screen"] for r in runs)
        table = time_baseline(browser, baseline.as_uri(), args.baseline_timeout)
        browser.close()
    for name, value in table.items():
        shown = f"{value:.0f} ms" if not math.isnan(value) else f"> {args.baseline_timeout:.0f} s"
        print(f"  plain table, {name}: {shown}")
    paint = table["first paint"]
    if math.isnan(paint):
        paint = args.baseline_timeout * 1000  # a lower bound of the baseline: the ratio is too
    for encoding, ms in first.items():
        bound = " (at least)" if math.isnan(table["first paint"]) else ""
        print(f"first rows ({encoding}): {paint / ms:.1f}x{bound} sooner than the plain table's "
              "first paint")  # fmt: skip


if __name__ == "__main__":
    main()
