"""`emflow judge INPUT.csv -o JUDGED.csv`: the judge stage outside Snakemake (wired in by
emflow.cli). Its options are JudgeSettings' fields, so a new setting is a new option."""

from __future__ import annotations

import argparse
import logging
import sys
import types
from dataclasses import Field, fields
from typing import get_args, get_type_hints

from emflow.errors import EmflowError
from emflow.judge.job import judge_csv, read_prompts
from emflow.judge.settings import BUNDLED_PROMPTS, DEFAULT_CACHE, JudgeSettings

logger = logging.getLogger("emflow.judge")


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `emflow judge INPUT.csv -o JUDGED.csv`: files, then JudgeSettings' fields."""
    parser.add_argument("input", metavar="INPUT", help="generations CSV (id,question,response)")
    parser.add_argument("-o", "--output", required=True, help="judged CSV to write")
    hints = get_type_hints(JudgeSettings)
    for setting in _cli_settings():
        kind = hints[setting.name]
        if isinstance(kind, types.UnionType):  # `str | None`: the option takes a str
            kind = next(k for k in get_args(kind) if k is not type(None))
        options = {k: v for k, v in setting.metadata.items() if k in ("help", "choices", "metavar")}
        parser.add_argument(
            f"--{setting.name.replace('_', '-')}", type=kind, default=setting.default, **options
        )
    parser.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        metavar="PATH",
        help="SQLite file of judge replies shared by all runs (default %(default)s)",
    )
    parser.add_argument(
        "--prompts-dir",
        default=str(BUNDLED_PROMPTS),
        help="directory with aligned.txt and coherent.txt (default: the "
        "homework's prompts bundled with emflow)",
    )
    parser.add_argument(
        "--usage",
        default=None,
        metavar="JSON",
        help="also write calls, cache hits, tokens and dollars to this file",
    )


def settings_from_args(args: argparse.Namespace) -> JudgeSettings:
    """The settings `emflow judge` was given; those it has no option for keep their default."""
    return JudgeSettings(
        **{setting.name: getattr(args, setting.name) for setting in _cli_settings()}
    )


def _cli_settings() -> list[Field]:
    return [setting for setting in fields(JudgeSettings) if setting.metadata.get("cli", True)]


def main_judge(args: argparse.Namespace) -> int:
    """`emflow judge`: judge a homework-format CSV; errors a user can fix exit with status 2."""
    if not logging.getLogger().handlers and not logger.handlers:
        # WARNING for the root keeps httpx's line per request out; the summary is INFO.
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    try:
        settings = settings_from_args(args)
        prompts = read_prompts(args.prompts_dir)
        judge_csv(
            args.input, args.output, prompts, settings, cache_path=args.cache, usage_json=args.usage
        )
    except EmflowError as exc:
        print(f"emflow judge: {exc}", file=sys.stderr)
        return 2
    return 0
