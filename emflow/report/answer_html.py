"""The answer page (issue 24): one offline HTML file showing every answer with its judges' scores.

`render_answer_page` fills the template in `emflow/report/answer_page/` with its CSS, its script
and the data of `emflow.report.answers` (the contract is in that module: title, judges, metrics,
targets, a string dictionary and one list per column). The page loads nothing from the network.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

_SLOT = re.compile(r"\{\{(title|css|js|data|data_type|encoding|text)\}\}")
# How the data is embedded: "json" (the default: readable, and progressive: the answers' text
# follows the page's script in chunks, so the first rows show before the browser has read it all)
# or "gzip+base64" (about a third of the size for long answers, read whole before the first row).
ENCODINGS = ("json", "gzip+base64")
# Answers per text chunk: each chunk costs one parse and one script run, a few ms for ~4 MB; a
# smaller chunk shows no row sooner (the first rows need no text to be drawn).
CHUNK_ROWS = 2500
# The call after each chunk that hands it to the page as soon as the HTML parser has read it.
_TEXT_CALL = "<script>answerPageText()</script>"


def _asset(name: str) -> str:
    return (
        resources.files("emflow.report").joinpath("answer_page", name).read_text(encoding="utf-8")
    )


def embedded_json(data: Any) -> str:
    """`data` as the page's JSON scripts hold it: compact, and with no "<" that could end one."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")


def _gzip_base64(data: Mapping[str, Any]) -> str:
    """The JSON gzip-compressed (no timestamp: the same data gives the same page) in base64."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    packed = gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def _text_chunks(responses: list[str], chunk_rows: int) -> str:
    """The answers' text as JSON arrays of `chunk_rows` answers, each one's first row in
    `data-start`, each followed by the call that reads it."""
    parts = []
    for start in range(0, len(responses), chunk_rows):
        body = embedded_json(responses[start : start + chunk_rows])
        parts.append(
            f'<script type="application/json" class="answer-text" data-start="{start}">'
            f"{body}</script>{_TEXT_CALL}\n"
        )
    return "".join(parts)


def render_answer_page(
    data: Mapping[str, Any], encoding: str = "json", *, chunk_rows: int = CHUNK_ROWS
) -> str:
    """The answer page's HTML text for `data` (the dict of `emflow.report.answers`), the data
    embedded as `encoding` (ENCODINGS); with "json", the answers' text in chunks of
    `chunk_rows` answers after everything else."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding is {encoding!r}; use one of {', '.join(ENCODINGS)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows is {chunk_rows}; use a positive number of answers")
    css, js = _asset("page.css"), _asset("page.js")
    # An asset that closed its own element would cut the page short; the assets are ours.
    if "</style" in css.lower() or "</script" in js.lower():
        raise RuntimeError("answer page assets must not contain </style or </script")
    if encoding == "json":
        columns = data["columns"]
        rest = {k: v for k, v in columns.items() if k != "response"}
        embedded = embedded_json({**data, "columns": rest})
        text = _text_chunks(list(columns["response"]), chunk_rows)
    else:
        embedded, text = _gzip_base64(data), ""
    parts = {
        "title": html.escape(str(data["title"])),
        "css": css,
        "js": js,
        "data": embedded,
        "data_type": "application/json" if encoding == "json" else "application/octet-stream",
        "encoding": encoding,
        "text": text,
    }
    # One pass, so a title or an answer that spells a slot is not filled in again.
    return _SLOT.sub(lambda match: parts[match.group(1)], _asset("page.html"))
