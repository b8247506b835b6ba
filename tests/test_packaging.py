"""The per-stage conda environments pin exactly what pyproject.toml pins."""

import re
import tomllib

import yaml
from conftest import REPO


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower()


def test_conda_envs_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = {_name(s): s for s in project["dependencies"] + extras["gpu"] + extras["capabilities"]}
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        assert pip, env_file
        for spec in pip:
            assert spec == pins[_name(spec)], (
                f"{env_file.name}: {spec} vs pyproject {pins[_name(spec)]}"
            )
