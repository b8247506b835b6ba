"""Reading a CSV a user hands emflow (generations, judged answers) without changing a row.

Python's `csv.DictReader` and pandas both change rows silently: an unquoted comma in an answer
makes an extra cell (DictReader files it under the key None; pandas, on the first row, turns the
first column into the index and shifts every name), a short row is padded with empty cells, and
a column named twice keeps only its last cell (DictReader) or becomes `response.1` (pandas).
Here each of those is an error naming the line or the column. A cell may be of any size: the
csv module's default limit, 131,072 characters, is less than a long answer.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from emflow.errors import EmflowError

QUOTING_FIX = (
    "quote cells that contain commas, quotes or line breaks and double the quotes inside them, "
    "as csv.writer does (the homework's generator writes its CSVs so)"
)


def _largest_field_size_limit() -> int:
    """The largest cell size the csv module accepts here: sys.maxsize overflows a C long where
    that is 32 bits (Windows), so step down until one fits."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return limit
        except OverflowError:
            limit //= 2


FIELD_SIZE_LIMIT = _largest_field_size_limit()


@dataclass(frozen=True)
class CsvTable:
    """A CSV's header and rows, every row as many cells as the header, and the line in the file
    where each row begins (a quoted cell may span lines)."""

    path: Path
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    lines: list[int]

    def records(self) -> list[dict[str, str]]:
        """The rows as {column: cell}."""
        return [dict(zip(self.header, row, strict=True)) for row in self.rows]


def _where(path: Path, first: int, last: int) -> str:
    return f"{path}, line {first}" if first == last else f"{path}, lines {first}-{last}"


def read_csv_table(path: str | os.PathLike, required: Sequence[str], fix: str) -> CsvTable:
    """Read a UTF-8 CSV (a byte-order mark is allowed) whose header has the `required` columns.

    Raises EmflowError naming the file and the line or column for: text that is not UTF-8, a
    quote left open, a column named twice, a required column missing (`fix` says what the file
    should be), and a row with more or fewer cells than the header. Blank lines are skipped.
    Raises FileNotFoundError as open() does, for the caller to word.
    """
    path = Path(path)
    csv.field_size_limit(FIELD_SIZE_LIMIT)  # set again: another library may have lowered it
    header: list[str] | None = None
    rows: list[tuple[str, ...]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            # strict: a quote left open is an error, not a cell that swallows the rest of the file
            reader = csv.reader(handle, strict=True)
            first = 1
            try:
                for cells in reader:
                    if cells and header is None:
                        header = cells
                        _check_header(path, header, required, fix)
                    elif cells:
                        if len(cells) != len(header):
                            raise EmflowError(
                                f"{_where(path, first, reader.line_num)}: the row has "
                                f"{len(cells)} cells but the header ({','.join(header)}) has "
                                f"{len(header)}; {QUOTING_FIX}."
                            )
                        rows.append(tuple(cells))
                        lines.append(first)
                    first = reader.line_num + 1
            except csv.Error as err:
                raise EmflowError(
                    f"{path}, line {first}: not valid CSV ({err}); {QUOTING_FIX}."
                ) from None
    except UnicodeDecodeError as err:
        raise EmflowError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8.") from None
    if header is None:
        raise EmflowError(f"{path}: the file is empty, so it lacks {', '.join(required)}; {fix}.")
    return CsvTable(path, tuple(header), rows, lines)


def _check_header(path: Path, header: list[str], required: Sequence[str], fix: str) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise EmflowError(
                f"{path}: the header names the column '{name}' twice (columns {seen[name]} and "
                f"{position}), so one of them would be ignored; rename or remove one."
            )
        seen[name] = position
    missing = [c for c in required if c not in seen]
    if missing:
        raise EmflowError(
            f"{path}: the header is '{','.join(header)}' and lacks {', '.join(missing)}; {fix}."
        )
