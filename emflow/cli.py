"""The `emflow` command: judge and check homework-format CSVs outside Snakemake.

emflow judge INPUT.csv -o JUDGED.csv [--model M] [--base-url URL] [--concurrency N] [...]
emflow verdict JUDGED.csv [--rows N]
emflow summary [--configfile config/config.yaml]
emflow install-profile [slurm]
"""

from __future__ import annotations

import argparse
import math
import sys

from emflow import __version__
from emflow.errors import EmflowError
from emflow.judge.cli import add_judge_arguments, main_judge
from emflow.report.judged import (
    HOMEWORK_RULES,
    format_scores,
    homework_averages,
    read_judged_csv,
    verdict,
)
from emflow.report.settings import Thresholds
from emflow.report.summary_cli import add_summary_arguments, main_summary
from emflow.workflow.profiles import add_install_profile_arguments, main_install_profile


# `emflow verdict`: the homework's averages and verdict of one judged CSV.
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_verdict_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `emflow verdict`'s arguments to `parser`."""
    parser.add_argument(
        "judged_csv",
        metavar="JUDGED.csv",
        help="a judged CSV (id,question,response,aligned_score,coherent_score)",
    )
    parser.add_argument(
        "--rows",
        type=_positive_int,
        default=None,
        metavar="N",
        help="use only the first N rows (the homework uses 20)",
    )
    parser.add_argument(
        "--rule",
        choices=HOMEWORK_RULES,
        default="each",
        help="each: every metric over the rows where it is an integer, as the homework's "
        "FINETUNED MODEL line; both: the rows where both scores are, as its BASE MODEL line "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--aligned-below",
        type=float,
        default=Thresholds.aligned_below,
        metavar="X",
        help="pass needs mean aligned below X (default: %(default)g)",
    )
    parser.add_argument(
        "--coherent-above",
        type=float,
        default=Thresholds.coherent_above,
        metavar="Y",
        help="pass needs mean coherent above Y (default: %(default)g)",
    )


def main_verdict(args: argparse.Namespace) -> int:
    """Print the homework's means and the threshold verdict of one judged CSV."""
    df = read_judged_csv(args.judged_csv)
    aligned, coherent = homework_averages(df, args.rows, rule=args.rule)
    if math.isnan(aligned) or math.isnan(coherent):
        which = (
            "an integer aligned_score and coherent_score"
            if args.rule == "both"
            else (
                "an integer aligned_score" if math.isnan(aligned) else "an integer coherent_score"
            )
        )
        raise EmflowError(
            f"{args.judged_csv}: no row has {which} (labels such as CODE or REFUSAL and empty "
            "cells leave it out), so there is nothing to average; judge the answers first or "
            "check the score columns."
        )
    thresholds = Thresholds(aligned_below=args.aligned_below, coherent_above=args.coherent_above)
    print(format_scores(aligned, coherent))
    print(verdict(aligned, coherent, thresholds)[1])
    return 0


COMMANDS = {
    "judge": (
        add_judge_arguments,
        main_judge,
        "score each answer of a generations CSV with an LLM judge",
    ),
    "verdict": (
        add_verdict_arguments,
        main_verdict,
        "print a judged CSV's mean scores and whether they pass the thresholds",
    ),
    "summary": (
        add_summary_arguments,
        main_summary,
        "rewrite the summary table and plot from the runs judged so far",
    ),
    "install-profile": (
        add_install_profile_arguments,
        main_install_profile,
        "install the SLURM profile so that `snakemake --profile slurm` finds it",
    ),
}
# Old names kept for one release: {old: new}. `summarize` was one letter from `summary`.
ALIASES = {"summarize": "verdict"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"emflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, main, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(main=main)
    for old, new in ALIASES.items():
        add_arguments, main, _ = COMMANDS[new]
        sub = commands.add_parser(old, description=f"old name of `emflow {new}`")
        add_arguments(sub)
        sub.set_defaults(main=main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error prints one line naming the command and exits with 2."""
    args = build_parser().parse_args(argv)
    if args.command in ALIASES:
        new = ALIASES[args.command]
        print(
            f"emflow: `{args.command}` is now `emflow {new}`; the old name goes next release.",
            file=sys.stderr,
        )
    try:
        return args.main(args)
    except EmflowError as err:
        print(f"emflow {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
