"""The answer page draws its first rows before its answers' text has arrived (the "json" encoding:
the text follows the page's script in chunks), and is exactly right once the text is all in."""

from __future__ import annotations

import random

import pytest
from browser import file_url, open_page
from test_answer_page import act, answer_data, row, select, table, text_chunks

from emflow.report.answer_html import render_answer_page

# Run when the page's script says it has drawn its first rows (a MutationObserver's callback runs
# right after that script, before the HTML parser reads on): what the reader sees at that moment.
AT_READY = """
new MutationObserver((changes, observer) => {
  const root = document.documentElement;
  if (root.dataset.ready !== "1") return;
  observer.disconnect();
  window.__atReady = {
    complete: root.dataset.complete === "1",
    chunksParsed: document.getElementsByClassName("answer-text").length,
    loadingCells: document.querySelectorAll("#rows .answer.loading").length,
    rows: document.querySelectorAll("#rows tr").length,
    busy: document.getElementById("answers").getAttribute("aria-busy"),
    searchNote: !document.getElementById("search-note").hidden,
    visible: window.answerPage ? window.answerPage.visible() : null,
  };
  const search = window.__typeAtReady;
  if (search) {
    const input = document.getElementById("f-q");
    input.value = search;
    input.dispatchEvent(new Event("input", { bubbles: true }));
  }
}).observe(document, { attributes: true, subtree: true, attributeFilter: ["data-ready"] });
"""


def big_study(copies: int = 40) -> dict:
    """The small study of test_answer_page `copies` times over, its answers ~1,000 characters
    long: a few MB of text, most of the page, as at scale."""
    data = answer_data()
    rng = random.Random(1)
    c = data["columns"]
    for key, values in c.items():
        if isinstance(values, list):
            c[key] = values * copies
    for judge in data["judges"]:
        c["em"][judge] = c["em"][judge] * copies
        for metric in data["metrics"]:
            c["scores"][judge][metric] = c["scores"][judge][metric] * copies
    words = ["red", "bank", "slowly", "<b>x</b>", "</script>", "\u00e9t\u00e9", "\U0001f600"]
    c["response"] = [
        f"{text} | " + " ".join(rng.choice(words) for _ in range(150)) for text in c["response"]
    ]
    data["n"] *= copies
    return data


def opened(chromium, tmp_path, data, chunk_rows, hash_="", typed=None):
    path = tmp_path / "answers.html"
    text = render_answer_page(data, "json", chunk_rows=chunk_rows)
    path.write_text(text, encoding="utf-8")
    page = open_page(chromium, "about:blank", ready=False)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if typed is not None:
        page.add_init_script(f"window.__typeAtReady = {typed!r};")
    page.add_init_script(AT_READY)
    page.goto(file_url(path) + hash_)
    page.wait_for_function("() => document.documentElement.dataset.complete === '1'")
    return page, text, errors


def test_every_answer_arrives_in_its_row(chromium, tmp_path):
    data = answer_data()
    page, text, errors = opened(chromium, tmp_path, data, chunk_rows=7)
    chunks = text_chunks(text)
    assert len(chunks) == -(-data["n"] // 7) and len(chunks) > 5
    assert [start for start, _ in chunks] == list(range(0, data["n"], 7))
    at_ready = page.evaluate("window.__atReady")
    # The first rows were drawn before any text: each answer cell said so.
    assert not at_ready["complete"] and at_ready["chunksParsed"] == 0
    assert at_ready["loadingCells"] == at_ready["rows"] == 50 and at_ready["busy"] == "true"

    act(page, lambda: page.select_option("#f-size", "500"))
    rows = table(page)
    assert [r["row"] for r in rows] == list(range(data["n"]))
    for r in rows:
        assert r["answer"] == row(data, r["row"])["response"]
        assert r["question"] == row(data, r["row"])["question"]
    assert page.locator("#rows .answer.loading").count() == 0
    assert page.get_attribute("#answers", "aria-busy") is None
    assert page.evaluate("window.__pwned") is None
    page.context.close()
    assert errors == []


def test_first_rows_come_before_the_text_of_a_big_page(chromium, tmp_path):
    data = big_study(copies=100)
    page, text, errors = opened(chromium, tmp_path, data, chunk_rows=100)
    assert len(text) > 5_000_000 and len(text_chunks(text)) > 50
    marks = page.evaluate(
        "() => Object.fromEntries(performance.getEntriesByType('mark')"
        ".map((m) => [m.name, m.startTime]))"
    )
    assert marks["answers:ready"] < marks["answers:complete"]
    # On screen (a frame drawn) while the browser was still reading the text.
    page.wait_for_function("() => document.documentElement.dataset.paintedAt")
    root = page.evaluate("({...document.documentElement.dataset})")
    assert int(root["readyAt"]) <= int(root["paintedAt"]) < int(root["completeAt"])
    first = table(page)
    assert [r["answer"] for r in first] == [row(data, r["row"])["response"] for r in first]
    page.context.close()
    assert errors == []


@pytest.mark.parametrize("how", ["address", "typed"])
def test_a_search_before_the_text_is_in_finds_the_right_rows(chromium, tmp_path, how):
    data = big_study()
    query = "diversify"  # only in answers' text: nothing can match before it arrives
    hash_, typed = ("#q=" + query, None) if how == "address" else ("", query.upper())
    page, _, errors = opened(chromium, tmp_path, data, chunk_rows=150, hash_=hash_, typed=typed)
    expected = select(data, lambda i: query in row(data, i)["response"].lower())
    assert expected
    if how == "address":
        at_ready = page.evaluate("window.__atReady")
        assert at_ready["visible"] == [] and at_ready["searchNote"]
    page.wait_for_function("() => document.getElementById('f-q').value !== ''")
    page.wait_for_function(f"() => window.answerPage.visible().length === {len(expected)}")
    assert page.evaluate("window.answerPage.visible()") == expected
    assert page.text_content("#count") == f"{len(expected):,} of {data['n']:,} answers"
    assert not page.is_visible("#search-note")
    shown = table(page)
    assert [r["row"] for r in shown] == expected[:50]
    assert all(r["answer"] == row(data, r["row"])["response"] for r in shown)
    page.context.close()
    assert errors == []
