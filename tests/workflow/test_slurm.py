"""The SLURM profiles: what users edit and install, and real runs against a local SLURM.

The `slurm`-marked tests need the single-node cluster of tests/slurm/start-slurm.sh. Without it
they skip, unless the environment variable CI is set: then they fail, because CI must run them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from emflow.errors import EmflowError
from emflow.workflow.profiles import (
    add_install_profile_arguments,
    install_profile,
    main_install_profile,
    snakemake_user_profile_dir,
)

REPO = Path(__file__).resolve().parents[2]
USER_PROFILE = REPO / "profiles" / "slurm"
TEST_PROFILE = REPO / "tests" / "slurm" / "profile"
TEST_PARTITION = "debug"
GPU_RULES = ("train", "generate")
LOCAL_RULES = (
    "decrypt_datasets",
    "prepare_dataset",
    "synthetic_datasets",
    "build_demo_model",
    "mix_dataset",
    "results",
    "training_curves",
    "summary",
)
# Keys in which the test profile may differ from the user profile (see its header comment).
TEST_ONLY_KEYS = {"slurm-status-command", "slurm-init-seconds-before-status-checks"}
TUNED_KEYS = {"jobs", "latency-wait", "retries", "default-resources", "set-resources"}

SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _load(profile_dir: Path) -> dict:
    return yaml.safe_load((profile_dir / "config.yaml").read_text(encoding="utf-8"))


def _require(condition: bool, reason: str) -> None:
    """Skip when `condition` is false, but fail under CI, which must run every SLURM test."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this test must run (see tests/slurm/start-slurm.sh).")
    pytest.skip(reason)


def _snakemake(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _no_slurm_env(tmp_path: Path) -> dict:
    """An environment whose PATH has this Python's tools but no SLURM commands."""
    bin_dir = tmp_path / "no-slurm-bin"
    bin_dir.mkdir()
    for tool in ("which", "sh", "bash", "env", "cat", "echo"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}"
    assert shutil.which("sinfo", path=env["PATH"]) is None
    return env


TINY_SNAKEFILE = textwrap.dedent(
    """\
    # Records where each job ran: a SLURM job id, or "local" for localrules.
    localrules: all, gather

    rule all:
        input: "gathered.txt"

    rule hello:
        output: "hello/{i}.txt"
        shell: 'echo "${{SLURM_JOB_ID:-local}}" > {output}'

    # Named like the workflow's GPU rule, so the profile's set-resources for train apply.
    rule train:
        output: "train.txt"
        shell: 'echo "${{SLURM_JOB_ID:-local}}" > {output}'

    rule gather:
        input: expand("hello/{i}.txt", i=range(2)), "train.txt"
        output: "gathered.txt"
        shell: 'cat {input} > {output}; echo "${{SLURM_JOB_ID:-local}}" >> {output}'
    """
)


# --- profiles --------------------------------------------------------------------------------


def test_user_profile_gives_gpu_rules_one_gpu_each():
    profile = _load(USER_PROFILE)
    assert profile["executor"] == "slurm"
    for rule in GPU_RULES:
        resources = profile["set-resources"][rule]
        assert resources["gpu"] == 1, rule
        assert resources["cpus_per_gpu"] >= 1, rule
        assert resources["mem_mb"] > 0 and resources["runtime"] > 0, rule
    # The cheap rules run locally through the workflow's localrules, not via the profile.
    assert not set(LOCAL_RULES) & set(profile["set-resources"])


def test_user_profile_marks_what_the_user_must_edit():
    text = (USER_PROFILE / "config.yaml").read_text(encoding="utf-8")
    defaults = _load(USER_PROFILE)["default-resources"]
    for key in ("slurm_partition", "slurm_account"):
        assert str(defaults[key]).startswith("EDIT_ME"), key
    # Every placeholder carries a comment saying what to put there.
    placeholder_lines = [ln for ln in text.splitlines() if ": EDIT_ME" in ln]
    assert len(placeholder_lines) == 4
    assert all("# EDIT:" in ln for ln in placeholder_lines), placeholder_lines
    for rule in GPU_RULES:
        partition = _load(USER_PROFILE)["set-resources"][rule]["slurm_partition"]
        assert str(partition).startswith("EDIT_ME"), rule
    assert {"runtime", "mem_mb"} <= set(defaults)


def test_test_profile_differs_from_user_profile_only_where_documented():
    user, test = _load(USER_PROFILE), _load(TEST_PROFILE)
    assert set(test) - set(user) == TEST_ONLY_KEYS
    assert set(user) - set(test) == set()
    for key in set(user) - TUNED_KEYS:
        assert test[key] == user[key], key
    assert test["slurm-status-command"] == "squeue"
    assert set(test["set-resources"]) == set(user["set-resources"])
    assert test["default-resources"]["slurm_partition"] == TEST_PARTITION
    assert "slurm_account" not in test["default-resources"]
    for rule in GPU_RULES:
        assert test["set-resources"][rule]["gpu"] == 0, rule
        assert test["set-resources"][rule]["slurm_partition"] == TEST_PARTITION, rule


def test_user_profile_dry_run_works_without_slurm(tmp_path):
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE, encoding="utf-8")
    result = _snakemake(["--profile", str(USER_PROFILE), "-n"], tmp_path, _no_slurm_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "slurm_partition=EDIT_ME_partition" in result.stdout


def _copy_workflow(destination: Path) -> Path:
    """Copy the checkout minus heavy and generated files, so a run never touches it."""
    shutil.copytree(
        REPO,
        destination,
        ignore=shutil.ignore_patterns(
            ".git", "results", ".snakemake", "__pycache__", ".pytest_cache", "*.egg-info"
        ),
        symlinks=True,
    )
    return destination


def _require_workflow() -> None:
    _require(
        (REPO / "Snakefile").is_file() and (REPO / "config" / "demo.yaml").is_file(),
        "the workflow (Snakefile, config/demo.yaml) does not exist yet",
    )


def test_demo_dry_run_with_user_profile_works_without_slurm(tmp_path):
    _require_workflow()
    workdir = _copy_workflow(tmp_path / "emflow")
    result = _snakemake(
        ["--profile", str(USER_PROFILE), "--configfile", "config/demo.yaml", "-n"],
        workdir,
        _no_slurm_env(tmp_path),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # (A dry run prints every job as "rule", so which rules stay local is checked by the real
    # run in test_demo_workflow_runs_through_the_test_profile.)
    for rule in GPU_RULES:
        job = re.search(rf"^rule {rule}:\n(?:    .*\n)*?    resources: (.*)$", output, re.M)
        assert job and "gpu=1" in job.group(1).split(", "), f"{rule} asks for no GPU:\n{output}"


# --- install-profile -------------------------------------------------------------------------


def test_install_profile_makes_the_short_profile_name_work(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert snakemake_user_profile_dir() == xdg / "snakemake"

    installed = install_profile()
    assert installed == xdg / "snakemake" / "slurm"
    assert (installed / "config.yaml").read_bytes() == (USER_PROFILE / "config.yaml").read_bytes()
    assert install_profile() == installed  # the same profile again is fine

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TINY_SNAKEFILE, encoding="utf-8")
    env = _no_slurm_env(tmp_path)
    env["XDG_CONFIG_HOME"] = str(xdg)
    result = _snakemake(["--profile", "slurm", "-n"], workdir, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "slurm_partition=EDIT_ME_partition" in result.stdout


def test_install_profile_keeps_an_edited_profile_unless_forced(tmp_path):
    installed = install_profile(destination=tmp_path)
    edited = (installed / "config.yaml").read_text(encoding="utf-8")
    edited = edited.replace("EDIT_ME_partition", "cpu")
    (installed / "config.yaml").write_text(edited, encoding="utf-8")

    with pytest.raises(EmflowError, match="--force"):
        install_profile(destination=tmp_path)
    assert (installed / "config.yaml").read_text(encoding="utf-8") == edited

    assert install_profile(destination=tmp_path, force=True) == installed
    assert (installed / "config.yaml").read_bytes() == (USER_PROFILE / "config.yaml").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["slurm"]  # no temporary left behind


def test_install_profile_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_install_profile_arguments(parser)
    args = parser.parse_args(["--destination", str(tmp_path)])
    assert main_install_profile(args) == 0
    assert (tmp_path / "slurm" / "config.yaml").is_file()
    captured = capsys.readouterr()
    assert "snakemake --profile slurm" in captured.out
    assert "EDIT_ME" in captured.err


# --- against a real SLURM --------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """The test partition of a running SLURM, or skip (fail under CI)."""
    _require(shutil.which("sinfo") is not None, "no SLURM here (sinfo not on PATH)")
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-p", TEST_PARTITION, "-o", "%t"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        states = result.stdout.split() if result.returncode == 0 else []
    except subprocess.TimeoutExpired:
        states = []
    _require(
        any(s.rstrip("*~#") in {"idle", "mix", "alloc"} for s in states),
        f"SLURM does not answer with a usable node in partition '{TEST_PARTITION}'",
    )
    return TEST_PARTITION


def _submitted_rules(output: str) -> dict[str, list[str]]:
    """Rule name -> SLURM job ids, from Snakemake's 'has been submitted' lines."""
    rules: dict[str, list[str]] = {}
    for job_id, log in SUBMITTED.findall(output):
        match = re.search(r"/rule_([^/]+)/", log)
        assert match, log
        rules.setdefault(match.group(1), []).append(job_id)
    return rules


@pytest.mark.slurm
def test_tiny_workflow_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE, encoding="utf-8")
    result = _snakemake(["--profile", str(TEST_PROFILE)], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    job_ids = [
        (tmp_path / name).read_text(encoding="utf-8").strip()
        for name in ("hello/0.txt", "hello/1.txt", "train.txt")
    ]
    assert all(j.isdigit() for j in job_ids), job_ids
    assert len(set(job_ids)) == 3
    submitted = _submitted_rules(output)
    assert set(submitted) == {"hello", "train"}, output
    assert sorted(submitted["hello"]) == sorted(job_ids[:2])
    assert submitted["train"] == [job_ids[2]]
    # The localrule ran in the submitting process, not as a SLURM job.
    assert (tmp_path / "gathered.txt").read_text(encoding="utf-8").splitlines()[-1] == "local"
    # Successful jobs' SLURM logs are cleaned up.
    assert not list((tmp_path / "results" / "logs" / "slurm").rglob("*.log"))


@pytest.mark.slurm
def test_failed_slurm_job_keeps_its_log(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            """\
            rule fail:
                output: "never.txt"
                shell: 'echo "emflow-marker: about to fail"; exit 3'
            """
        ),
        encoding="utf-8",
    )
    result = _snakemake(["--profile", str(TEST_PROFILE)], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert not (tmp_path / "never.txt").exists()
    logs = list((tmp_path / "results" / "logs" / "slurm" / "rule_fail").rglob("*.log"))
    assert len(logs) == 1, output
    assert "emflow-marker: about to fail" in logs[0].read_text(encoding="utf-8")


@pytest.mark.slurm
def test_demo_workflow_runs_through_the_test_profile(slurm_cluster, tmp_path):
    _require_workflow()
    workdir = _copy_workflow(tmp_path / "emflow")
    args = ["--profile", str(TEST_PROFILE), "--configfile", "config/demo.yaml"]
    result = _snakemake(args, workdir, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]

    submitted = _submitted_rules(output)
    for rule in GPU_RULES:
        assert submitted.get(rule), f"rule {rule} was not submitted to SLURM:\n{output[-5000:]}"
    local_but_submitted = set(submitted) & set(LOCAL_RULES)
    assert not local_but_submitted, f"localrules went to SLURM: {local_but_submitted}"

    again = _snakemake([*args, "-n"], workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr


# The options the user profile offers as comments: {key: where it goes in the YAML}.
PROFILE_OPTIONS = {
    "slurm-requeue": (),
    "qos": ("default-resources",),
    "gres": ("set-resources", "train"),
    "constraint": ("set-resources", "train"),
}


def test_user_profile_offers_each_cluster_option_where_it_works():
    """Uncommented, each commented option lands where Snakemake and the plugin read it."""
    text = (USER_PROFILE / "config.yaml").read_text(encoding="utf-8")
    keys = "|".join(map(re.escape, PROFILE_OPTIONS))
    uncommented = re.sub(rf"^(\s*)# ({keys}): ", r"\1\2: ", text, flags=re.M)
    profile = yaml.safe_load(uncommented)
    for key, path in PROFILE_OPTIONS.items():
        section = profile
        for part in path:
            section = section[part]
        assert key in section, key


@pytest.mark.slurm
def test_requeue_qos_and_constraint_reach_sbatch(slurm_cluster, tmp_path):
    """The options on the real SLURM: the train job's sbatch line carries them and SLURM holds
    the job with them (the test node has the feature emflow_test; without accounting SLURM
    accepts a QOS and records none)."""
    profile = _load(TEST_PROFILE)
    profile["slurm-requeue"] = True
    profile["default-resources"]["qos"] = "normal"
    profile["set-resources"]["train"]["constraint"] = "emflow_test"
    profile_dir = tmp_path / "profile"
    profile_dir.mkdir()
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE, encoding="utf-8")
    result = _snakemake(["--profile", str(profile_dir), "--verbose"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    train_id = (tmp_path / "train.txt").read_text(encoding="utf-8").strip()
    calls = [line for line in output.splitlines() if "sbatch" in line and "--qos=normal" in line]
    assert calls and all("--requeue" in line for line in calls), output[-5000:]
    assert any("-C emflow_test" in line for line in calls), output[-5000:]
    shown = subprocess.run(
        ["scontrol", "show", "job", train_id], capture_output=True, text=True, timeout=20
    ).stdout
    assert "Requeue=1" in shown and "Features=emflow_test" in shown, shown
