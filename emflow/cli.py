"""The `emflow` command: judge and summarize homework-format CSVs outside Snakemake.

    emflow judge INPUT.csv -o JUDGED.csv [--model M] [--base-url URL] [--concurrency N] [--cache PATH]
    emflow summarize JUDGED.csv [--rows N]
    emflow summary [--configfile config/config.yaml]
    emflow install-profile [slurm]
"""

from __future__ import annotations

import argparse
import sys

from emflow import __version__
from emflow.judge import add_judge_arguments, main_judge
from emflow.profiles import add_install_profile_arguments, main_install_profile
from emflow.report import add_summarize_arguments, main_summarize
from emflow.workflow import add_summary_arguments, main_summary

COMMANDS = {
    "judge": (add_judge_arguments, main_judge, "score each answer of a generations CSV with an LLM judge"),
    "summarize": (add_summarize_arguments, main_summarize, "print a judged CSV's mean scores and verdict"),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"emflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, main, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(main=main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.main(args)


if __name__ == "__main__":
    sys.exit(main())
