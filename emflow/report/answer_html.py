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

_SLOT = re.compile(r"\{\{(title|css|js|data|data_type|encoding)\}\}")
# How the data is embedded: "gzip+base64" (the default: about a third of the JSON's size for long
# answers, and faster to open, as the browser inflates it natively) or "json" (readable).
ENCODINGS = ("gzip+base64", "json")


def _asset(name: str) -> str:
    return (
        resources.files("emflow.report").joinpath("answer_page", name).read_text(encoding="utf-8")
    )


def embedded_json(data: Mapping[str, Any]) -> str:
    """The data as the page's JSON script holds it: compact, and with no "<" that could end it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")


def _gzip_base64(data: Mapping[str, Any]) -> str:
    """The JSON gzip-compressed (no timestamp: the same data gives the same page) in base64."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    packed = gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def render_answer_page(data: Mapping[str, Any], encoding: str = "gzip+base64") -> str:
    """The answer page's HTML text for `data` (the dict of `emflow.report.answers`), the data
    embedded as `encoding` (ENCODINGS)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding is {encoding!r}; use one of {', '.join(ENCODINGS)}")
    css, js = _asset("page.css"), _asset("page.js")
    # An asset that closed its own element would cut the page short; the assets are ours.
    if "</style" in css.lower() or "</script" in js.lower():
        raise RuntimeError("answer page assets must not contain </style or </script")
    parts = {
        "title": html.escape(str(data["title"])),
        "css": css,
        "js": js,
        "data": embedded_json(data) if encoding == "json" else _gzip_base64(data),
        "data_type": "application/json" if encoding == "json" else "application/octet-stream",
        "encoding": encoding,
    }
    # One pass, so a title or an answer that spells a slot is not filled in again.
    return _SLOT.sub(lambda match: parts[match.group(1)], _asset("page.html"))
