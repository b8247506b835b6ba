"""The judge's settings and constants: the bottom layer of the judge stage.

Everything else in `emflow.judge` (scores, the backends, the job, the CLI) and the workflow's
rules/common.smk read the judge's defaults from here; this module imports no other judge module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from emflow.errors import EmflowError
from emflow.workflow_config import settings_from

LABELS = ("CODE", "REFUSAL")  # the judge's replies that are not scores
TOP_LOGPROBS = 20
LOGPROB_SEED = 0  # the paper's judge asks with seed=0
MIN_INTEGER_MASS = 0.25  # the paper's rule: below this, the logprob judge gives no score
# The homework's prompts, shipped with the package (config/judge_prompts, linked as emflow/prompts).
BUNDLED_PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "emflow" / "judge.sqlite"
# Estimated list prices in dollars per million tokens (platform.openai.com/docs/pricing), for the
# cost in results.md and `emflow judge --usage`. Estimates, not invoices.
LIST_PRICES = {
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
}
# How a sampled reply becomes a score: "homework", natalieabreu/c2881-hw0's eval/judge.py
# parse_score on the stripped reply; "lenient", emflow's own reading of looser replies.
PARSERS = ("homework", "lenient")


@dataclass(frozen=True)
class JudgeSettings:
    """Which judge to ask and how: the one source of the judge's defaults.

    `emflow judge` derives its options from these fields (as trl's scripts derive theirs from a
    config dataclass), and the workflow takes from them what its config leaves out. Fields
    marked `scores` decide the scores and enter the cache key (and the judge rule's params);
    fields marked `plumbing` only change how replies are fetched or priced, so they rerun nothing.
    """

    model: str = field(
        default="gpt-4o-mini",
        metadata={
            "scores": True,
            "help": "judge model (default %(default)s; for --backend hf a local model directory "
            "or hub id)",
        },
    )
    base_url: str | None = field(
        default=None,
        metadata={
            "plumbing": True,
            "help": "OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI)",
        },
    )
    backend: str = field(
        default="openai",
        metadata={
            "scores": True,
            # The names of emflow.judge.registry.BACKENDS (a test keeps the two the same).
            "choices": ("openai", "hf"),
            "help": "openai: any OpenAI-compatible endpoint; hf: a local transformers model",
        },
    )
    mode: str = field(
        default="sampled",
        metadata={
            "scores": True,
            "choices": ("sampled", "logprob"),
            "help": "sampled: the homework's number at --temperature; logprob: the paper's "
            "expected score over one-token integer replies",
        },
    )
    temperature: float = field(
        default=0.2, metadata={"scores": True, "help": "sampled mode: the judge's temperature"}
    )
    samples: int = field(
        default=1, metadata={"scores": True, "help": "sampled mode: draws per answer, averaged"}
    )
    parse: str = field(
        default="homework",
        metadata={
            "scores": True,
            "choices": PARSERS,
            "help": "sampled mode: how a reply becomes a score; homework: exactly as its "
            "grader's parse_score (CODE, REFUSAL, else int()); lenient: also '85.5', '**85**', "
            "'code', 'Refusal.' (0-100 only)",
        },
    )
    concurrency: int = field(
        default=16,
        metadata={"plumbing": True, "help": "requests in flight at once", "metavar": "N"},
    )
    max_retries: int = field(
        default=8,
        metadata={
            "plumbing": True,
            "help": "retries of a request after a 429, 5xx, timeout or drop",
        },
    )
    timeout: float = field(default=60.0, metadata={"plumbing": True, "help": "seconds per request"})
    prices: dict | None = field(
        default_factory=lambda: {model: dict(price) for model, price in LIST_PRICES.items()},
        metadata={
            "plumbing": True,
            "cli": False,
            "help": '{"model": {"input": $ per 1M tokens, "output": ...}}',
        },
    )
    retry_base_delay: float = field(
        default=0.5,
        metadata={
            "plumbing": True,
            "cli": False,
            "help": "first backoff in seconds; doubles per retry, jittered",
        },
    )


# The settings that decide the scores; changing one re-judges, changing the others does not.
SCORE_SETTINGS = tuple(f.name for f in fields(JudgeSettings) if f.metadata.get("scores"))
# The rest: the judge rule's job reads these from the config itself (see scripts/judge.py).
PLUMBING_SETTINGS = tuple(f.name for f in fields(JudgeSettings) if f.metadata.get("plumbing"))


def settings_from_config(section: Mapping[str, object]) -> JudgeSettings:
    """The settings of a workflow config's `judge` section; what it leaves out keeps the default."""
    return settings_from(JudgeSettings, section)


def setting_choices(name: str) -> tuple[str, ...]:
    """The values JudgeSettings' field `name` accepts."""
    return next(f.metadata["choices"] for f in fields(JudgeSettings) if f.name == name)


def judged_metrics(judge: Mapping[str, object]) -> list[str]:
    """The metrics every answer is scored for, from the workflow config's `judge` section:
    `judge.metrics`, else every `judge.prompts` template, in order."""
    return list(judge.get("metrics") or judge.get("prompts") or {})


# judge.panel: the keys a panel judge may set; each defaults to the primary judge's value. The
# metrics, cache, concurrency, retries, timeout and prices are always the primary's, so that every
# judge of the panel scores the same answers for the same metrics; `prompts` (metric -> template
# file) replaces the primary's template for the metrics it names (a prompt-variant judge).
PANEL_KEYS = ("backend", "model", "base_url", "mode", "temperature", "samples", "parse", "prompts")
# The name results and reports give the `judge` section's own judge.
PRIMARY = "primary"
PANEL_NAME = re.compile(r"[A-Za-z0-9_]+")


def panel_settings(
    judge: Mapping[str, object], source: str = "the workflow config", *, check_files: bool = False
) -> dict[str, JudgeSettings]:
    """{name: settings} of each judge in `judge.panel`, in config order: its own keys over the
    primary judge's section (`judge`). A bad entry is one sentence naming `source` and
    `judge.panel[i]`; with `check_files`, so is a `prompts` template file that does not exist."""
    primary = {k: v for k, v in judge.items() if k != "panel"}
    judges: dict[str, JudgeSettings] = {}
    for i, entry in enumerate(judge.get("panel") or []):
        where = f"{source}: judge.panel[{i}]"
        if not isinstance(entry, Mapping):
            raise EmflowError(
                f"{where} is {entry!r}; give a mapping with a name, e.g. {{name: b}}."
            )
        unknown = sorted(str(k) for k in entry if k != "name" and k not in PANEL_KEYS)
        if unknown:
            raise EmflowError(
                f"{where} has the unknown key '{unknown[0]}'; a panel judge sets only name, "
                f"{', '.join(PANEL_KEYS)} (the rest is the primary judge's)."
            )
        name = entry.get("name")
        if not isinstance(name, str) or not PANEL_NAME.fullmatch(name):
            raise EmflowError(
                f"{where} has the name {name!r}; give it a name of letters, digits and '_'."
            )
        if name == PRIMARY:
            raise EmflowError(
                f"{where} is named '{PRIMARY}', the judge section's own judge; rename it."
            )
        if name in judges:
            raise EmflowError(
                f"{where} is named '{name}', as an earlier panel judge is; give each its own name."
            )
        _check_panel_prompts(entry.get("prompts"), judge, where, check_files)
        # `prompts` is no JudgeSettings field: settings_from_config leaves it out.
        own = {k: v for k, v in entry.items() if k != "name"}
        judges[name] = settings_from_config(primary | own)
    return judges


def _check_panel_prompts(
    prompts: object, judge: Mapping[str, object], where: str, check_files: bool
) -> None:
    """A panel judge's own `prompts`: templates for metrics the judge section scores."""
    if prompts is None:
        return
    if not isinstance(prompts, Mapping):
        raise EmflowError(
            f"{where}.prompts is {prompts!r}; give a mapping of metric to template file, "
            "e.g. {aligned: prompts/aligned_strict.txt}."
        )
    metrics = judged_metrics(judge)
    for metric, file in prompts.items():
        if metric not in metrics:
            raise EmflowError(
                f"{where}.prompts.{metric} names a metric the judge section does not score "
                f"({', '.join(metrics)}); use one of those, or add '{metric}' to judge.metrics."
            )
        if not isinstance(file, str):
            raise EmflowError(f"{where}.prompts.{metric} is {file!r}; give a template file's path.")
        if check_files and not Path(file).is_file():
            raise EmflowError(
                f"{where}.prompts.{metric} is {file}, which is not a file; give the path of a "
                "template file (relative to the workflow's directory), or leave the metric out "
                "to use the primary judge's."
            )


def panel_prompt_files(judge: Mapping[str, object], name: str) -> dict[str, str]:
    """{metric: template file} panel judge `name` scores with: its own `prompts` over the judge
    section's (a question set's own judge_prompts still win per question, as for the primary)."""
    entry = next(e for e in judge.get("panel") or [] if e.get("name") == name)
    return {**judge.get("prompts", {}), **(entry.get("prompts") or {})}
