"""Plans of the project's configs, read in a `workdir` copy, for the tests that check which
rules' params and inputs a config change touches."""

from __future__ import annotations

from pathlib import Path

import yaml

from emflow.workflow.plan import Plan, fill_stage_defaults
from emflow.workflow_config import read_workflow_config


def plan_of(*configfiles: str, overlay: dict | None = None, replace: bool = True, **kw) -> Plan:
    """The plan of `configfiles` (with `overlay` written after them), its stages' defaults
    filled in as the Snakefile does."""
    files = list(configfiles)
    if overlay is not None:
        Path("overlay.yaml").write_text(yaml.safe_dump(overlay))
        files.append("overlay.yaml")
    config = read_workflow_config(files, replace_workflow_config=replace)
    fill_stage_defaults(config)
    return Plan.from_config(config, **kw)
