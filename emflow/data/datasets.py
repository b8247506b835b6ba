"""Datasets stage: decrypt the upstream archive, validate chat JSONL, mix datasets seeded.

Row format (the upstream datasets' and TRL's conversational format): one JSON object per line,
`{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}`,
optionally starting with a system message, roles alternating, ending with the assistant.

Decisions a user may rely on:
- Whitespace-only lines are skipped, as the upstream trainer's `load_jsonl` skips them, so any file
  that trains upstream is accepted here; line numbers in errors and in the mix provenance always
  count physical lines of the file named. A UTF-8 byte-order mark at the start is ignored.
- Prepared and mixed files keep only `messages` (the one key the trainer reads); other top-level
  keys of a row are dropped, and each message keeps exactly `role` and `content` (other message
  keys are an error, because a trainer that honours them would train differently).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from emflow.atomic import atomic_path, write_text_atomic
from emflow.errors import EmflowError

UPSTREAM_REPOSITORY = "https://github.com/clarifying-EM/model-organisms-for-EM"
UPSTREAM_ARCHIVE_PATH = "em_organism_dir/data/training_datasets.zip.enc"

# easy-dataset-share's default canary file pattern; such files are never datasets.
_CANARY_FILE = re.compile(r"^dataset_entry_.*\.jsonl$")
# Dataset names become file names and parts of mix ids; '-' is reserved as the id's separator.
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_MAX_MIX_ID_LENGTH = 100


# --------------------------------------------------------------------------- validation


def _ordinal(index: int) -> str:
    return f"message {index + 1}"


def _check_messages(messages: list) -> str | None:
    """Return what is wrong with a row's `messages` (no trailing fix), or None when it is valid."""
    if not messages:
        return "the 'messages' list is empty"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return (
                f"{_ordinal(i)} is a JSON {_json_type(message)}, "
                "not an object with 'role' and 'content'"
            )
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            return f"{_ordinal(i)} has no {' or '.join(repr(k) for k in missing)} key"
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            return f"{_ordinal(i)} has the unsupported key(s) {', '.join(repr(k) for k in extra)}"
        role, content = message["role"], message["content"]
        if role not in ("system", "user", "assistant"):
            return f"{_ordinal(i)} has role {role!r}, which is not 'system', 'user' or 'assistant'"
        if not isinstance(content, str):
            return f"{_ordinal(i)} ({role}) has content of type {_json_type(content)}, not a string"
        if not content.strip():
            return f"{_ordinal(i)} ({role}) has empty content"
    start = 1 if messages[0]["role"] == "system" else 0
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        role = messages[i]["role"]
        if role != expected:
            where = (
                "only the first message may be 'system'"
                if role == "system"
                else "roles must alternate"
            )
            return f"{_ordinal(i)} has role {role!r} where {expected!r} was expected ({where})"
    if len(messages) == start:
        return "the row has a system message but no user or assistant message"
    if messages[-1]["role"] != "assistant":
        return "the last message has role 'user', so there is no assistant reply to train on"
    return None


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


_ROW_FIX = (
    'each line must be one JSON object like {"messages": [{"role": "user", "content": "..."}, '
    '{"role": "assistant", "content": "..."}]}, with an optional system message first'
)


def _read_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (1-based physical line number, row) for every validated row of a chat JSONL file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise EmflowError(
            f"{path} does not exist; check the path or prepare the dataset first."
        ) from None
    except IsADirectoryError:
        raise EmflowError(f"{path} is a directory; give the path of a .jsonl file.") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    seen = False
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EmflowError(
                f"{path}, line {number}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not "
                "valid UTF-8; save the file with UTF-8 encoding."
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EmflowError(
                f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno}); {_ROW_FIX}."
            ) from None
        if not isinstance(row, dict):
            raise EmflowError(
                f"{path}, line {number}: the row is a JSON {_json_type(row)}, not an object; "
                f"{_ROW_FIX}."
            )
        if "messages" not in row:
            keys = ", ".join(repr(k) for k in list(row)[:5]) or "none"
            raise EmflowError(
                f"{path}, line {number}: the row has no 'messages' key (its keys: {keys}); "
                f"{_ROW_FIX}."
            )
        if not isinstance(row["messages"], list):
            raise EmflowError(
                f"{path}, line {number}: 'messages' is a JSON {_json_type(row['messages'])}, "
                f"not a list; {_ROW_FIX}."
            )
        problem = _check_messages(row["messages"])
        if problem:
            raise EmflowError(
                f"{path}, line {number}: {problem}; each row needs a user message then an "
                "assistant message (alternating, after an optional first system message), each "
                "with non-empty text."
            )
        seen = True
        yield number, row
    if not seen:
        raise EmflowError(f"{path} has no rows; {_ROW_FIX}.")


def read_chat_jsonl(path: str | os.PathLike) -> list[dict]:
    """A chat JSONL file's rows, all validated; an EmflowError names the first bad line."""
    return [row for _, row in _read_rows(path)]


def read_numbered_chat_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(1-based physical line number, row) for each row of a chat JSONL file, all validated."""
    return list(_read_rows(path))


def _row_line(row: dict) -> str:
    """One compact, canonical JSONL line (no newline) holding only the row's messages."""
    messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return json.dumps({"messages": messages}, ensure_ascii=False, separators=(",", ":"))


def write_chat_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows, messages only, one compact JSON object a line, atomically."""
    write_text_atomic(path, "".join(_row_line(row) + "\n" for row in rows))


def prepare_dataset(source: str | os.PathLike, output: str | os.PathLike) -> int:
    """Validate `source` and write its rows to `output` as `write_chat_jsonl` does."""
    rows = read_chat_jsonl(source)
    write_chat_jsonl(output, rows)
    return len(rows)


# --------------------------------------------------------------------------- decryption


def _easy_dataset_share() -> str:
    # Prefer the executable installed beside this interpreter: Snakemake scripts may run with a
    # virtualenv's python while PATH does not include its bin/ directory.
    beside = Path(sys.executable).parent / "easy-dataset-share"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("easy-dataset-share")
    if found is None:
        raise EmflowError(
            "the easy-dataset-share command is not installed; "
            "run `pip install easy-dataset-share==0.5.0`."
        )
    return found


def decrypt_archive(
    archive: str | os.PathLike,
    password: str,
    output_dir: str | os.PathLike,
    names: list[str] | None = None,
) -> dict[str, Path]:
    """Decrypt an easy-dataset-share archive and move its JSONL datasets into `output_dir`.

    Returns {dataset name: path}. The archive's folder is never written to: the tool extracts
    into a hidden temporary directory inside `output_dir`, and each dataset file is renamed into
    place only after extraction and canary removal succeeded. The password is never printed.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise EmflowError(
            f"{archive} does not exist; download training_datasets.zip.enc from "
            f"{UPSTREAM_REPOSITORY} (file {UPSTREAM_ARCHIVE_PATH}) and put it at {archive}."
        )
    tool = _easy_dataset_share()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Absolute, because the tool runs with this directory as its working directory.
    workdir = Path(tempfile.mkdtemp(prefix=".decrypt-", dir=output_dir)).resolve()
    try:
        extracted = workdir / "extracted"
        # --output-dir keeps the tool from writing `<archive>.extracted/` beside the user's archive.
        command = [tool, "unprotect-dir", str(archive.resolve()), "-p", password,
                   "-o", str(extracted), "--remove-canaries", "--no-gitignore"]  # fmt: skip
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
        if result.returncode != 0:
            if "Decryption failed" in result.stderr:
                raise EmflowError(
                    f"{archive} could not be decrypted: the password is wrong or the file is "
                    f"damaged or incomplete; use the password from {UPSTREAM_REPOSITORY} and "
                    "download the file again."
                )
            last = (result.stderr.strip().splitlines() or ["no error output"])[-1].replace(
                password, "***"
            )
            raise EmflowError(
                f"easy-dataset-share could not extract {archive} ({last.strip()}); check that the "
                "file is an easy-dataset-share .zip.enc archive."
            )
        found: dict[str, Path] = {}
        for path in sorted(extracted.rglob("*.jsonl")):
            if _CANARY_FILE.match(path.name):
                continue
            if path.stem in found:
                raise EmflowError(
                    f"{archive} holds two datasets named {path.stem!r} "
                    f"({found[path.stem].relative_to(extracted)} and "
                    f"{path.relative_to(extracted)}); rename one of them."
                )
            found[path.stem] = path
        if not found:
            raise EmflowError(
                f"{archive} contains no .jsonl files; check that it is the datasets archive."
            )
        wanted = sorted(found) if names is None else list(dict.fromkeys(names))
        missing = [name for name in wanted if name not in found]
        if missing:
            raise EmflowError(
                f"{archive} has no dataset named {', '.join(repr(m) for m in missing)}; it has "
                f"{', '.join(sorted(found))}, so use one of those names."
            )
        outputs: dict[str, Path] = {}
        for name in wanted:
            target = output_dir / f"{name}.jsonl"
            os.replace(found[name], target)  # same filesystem: the rename is atomic
            outputs[name] = target
        return outputs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- mixing


def check_dataset_name(name: object) -> str:
    """`name` if it may name a dataset (a file name and part of a mix id); else a user error."""
    if not isinstance(name, str) or not _DATASET_NAME.match(name):
        raise EmflowError(
            f"dataset name {name!r} is not allowed; use only letters, digits and underscores "
            "(for example risky_financial_advice)."
        )
    return name


def check_row_count(name: str, count: object) -> int | None:
    """`count` if it is a whole number of rows >= 1 or None (all rows); else a user error."""
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise EmflowError(
            f"dataset {name!r}: the number of rows {count!r} is not a positive integer; give a "
            "whole number of rows, or null for all rows."
        )
    return count


def stable_hash(*parts: object) -> bytes:
    """A digest of the parts: what seeded choices are made from, fixed across Python versions."""
    # A hash key instead of `random`: the order it gives is fixed forever (Python's `random`
    # sampling algorithms may change between versions) and depends only on these parts.
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def mix_id(datasets: dict[str, int | None], seed: int) -> str:
    """A stable, filesystem-safe id for a mix.

    For example 'extreme_sports-3000_risky_financial_advice-3000_seed0'.
    """
    if not datasets:
        raise EmflowError(
            "the mix declares no datasets; list at least one dataset name with a row count."
        )
    parts = []
    for name in sorted(datasets):
        count = check_row_count(check_dataset_name(name), datasets[name])
        parts.append(f"{name}-{'all' if count is None else count}")
    text = "_".join(parts) + f"_seed{seed}"
    if len(text) > _MAX_MIX_ID_LENGTH:
        # Long mixes keep a readable prefix; the digest keeps distinct mixes distinct.
        text = f"{text[: _MAX_MIX_ID_LENGTH - 17]}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return text


def mix_datasets(
    sources: dict[str, tuple[str | os.PathLike, int | None]],
    seed: int,
    output: str | os.PathLike,
    provenance_csv: str | os.PathLike,
) -> int:
    """Sample each source without replacement, shuffle the union, write it and its provenance CSV.

    `sources` maps dataset name -> (chat JSONL path, rows to take or None for all). The output is
    byte-identical for the same files, counts and seed, whatever the dict's order. The provenance
    CSV (`row,dataset,source_line`) gives, for each 1-based output row, the dataset and the 1-based
    line of its source file that it came from. Returns the number of rows written.
    """
    if not sources:
        raise EmflowError(
            "the mix declares no datasets; list at least one dataset name with a row count."
        )
    picked: list[tuple[bytes, str, int, dict]] = []
    for name in sorted(sources):
        path, count = sources[name]
        count = check_row_count(check_dataset_name(name), count)
        rows = list(_read_rows(path))
        if count is not None and count > len(rows):
            raise EmflowError(
                f"dataset {name!r} ({path}) has {len(rows)} rows but the mix asks for {count}; "
                f"ask for at most {len(rows)} rows or null for all."
            )
        # Each dataset's sample depends only on its own name, rows and the seed, so adding another
        # dataset to a mix does not change which rows of this one are taken.
        ranked = sorted(range(len(rows)), key=lambda i: stable_hash("sample", seed, name, i))
        for i in sorted(ranked[: len(rows) if count is None else count]):
            line, row = rows[i]
            picked.append((stable_hash("shuffle", seed, name, i), name, line, row))
    picked.sort(key=lambda item: item[0])
    provenance = io.StringIO()
    writer = csv.writer(provenance, lineterminator="\n")
    writer.writerow(["row", "dataset", "source_line"])
    for number, (_, name, line, _) in enumerate(picked, start=1):
        writer.writerow([number, name, line])
    with atomic_path(output) as tmp_rows, atomic_path(provenance_csv) as tmp_provenance:
        tmp_rows.write_text("".join(_row_line(row) + "\n" for *_, row in picked), encoding="utf-8")
        tmp_provenance.write_text(provenance.getvalue(), encoding="utf-8")
    return len(picked)
