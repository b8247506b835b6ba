"""Install the repository's Snakemake profiles where `snakemake --profile NAME` finds them.

Snakemake 9 resolves `--profile NAME` (snakemake/cli.py, get_profile_dir) by looking for a
folder NAME in the current directory, then in platformdirs' user config folder
(`$XDG_CONFIG_HOME/snakemake`, default `~/.config/snakemake` on Linux), then in the site
folder (`/etc/xdg/snakemake`). Installing into the user folder makes the literal
`snakemake --profile slurm` work from the repo root without touching the checkout.

The profiles are read from the checkout (`profiles/<name>/` beside this package), not shipped
as package data: the workflow itself (Snakefile, rules/) only exists in a checkout too.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

import platformdirs

from emflow.atomic import atomic_path
from emflow.errors import EmflowError


def snakemake_user_profile_dir() -> Path:
    """The user folder where Snakemake looks up `--profile NAME` (honours XDG_CONFIG_HOME)."""
    # Same AppDirs arguments as snakemake.common.get_appdirs().
    return Path(platformdirs.user_config_dir("snakemake", "snakemake"))


def find_profile_source(name: str) -> Path:
    """The folder `profiles/<name>` of the checkout this package runs from, or of the cwd."""
    candidates = [
        Path(__file__).resolve().parents[2] / "profiles" / name,
        Path.cwd() / "profiles" / name,
    ]
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise EmflowError(
        f"profiles/{name}/config.yaml: not found beside the emflow package or in the current "
        f"directory; run this command from the emflow repository root (or pass --source)."
    )


def _same_tree(left: Path, right: Path) -> bool:
    """True when both folders hold the same file names with the same contents."""
    comparison = filecmp.dircmp(left, right)
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, comparison.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(left / sub, right / sub) for sub in comparison.common_dirs)


def install_profile(
    name: str = "slurm",
    destination: Path | None = None,
    force: bool = False,
    source: Path | None = None,
) -> Path:
    """Copy `profiles/<name>` to `<destination>/<name>` (default: Snakemake's user folder)."""
    source_dir = Path(source) if source is not None else find_profile_source(name)
    if not (source_dir / "config.yaml").is_file():
        raise EmflowError(
            f"{source_dir}: has no config.yaml; point --source at a Snakemake profile folder."
        )
    root = Path(destination) if destination is not None else snakemake_user_profile_dir()
    target = root / name
    if target.exists() or target.is_symlink():
        if target.is_dir() and _same_tree(source_dir, target):
            return target
        if not force:
            raise EmflowError(
                f"{target}: a different profile named '{name}' is already installed there; "
                f"compare it with {source_dir} and rerun with --force to replace it."
            )
        if target.is_symlink() or not target.is_dir():
            target.unlink()
    with atomic_path(target) as tmp:
        shutil.copytree(source_dir, tmp)
    return target


def add_install_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `emflow install-profile`."""
    parser.add_argument(
        "name",
        nargs="?",
        default="slurm",
        help="profile to install, a folder under profiles/ (default: slurm)",
    )
    parser.add_argument(
        "--destination",
        type=Path,
        default=None,
        help="folder that holds Snakemake profiles "
        f"(default: {snakemake_user_profile_dir()}, where `snakemake --profile NAME` looks)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="profile folder to copy (default: profiles/NAME of this checkout)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a different profile of the same name that is already installed",
    )


def main_install_profile(args: argparse.Namespace) -> int:
    """Run `emflow install-profile`; print where the profile went and how to use it."""
    target = install_profile(
        name=args.name, destination=args.destination, force=args.force, source=args.source
    )
    print(f"Installed the '{args.name}' profile in {target}.")
    if "EDIT_ME" in (target / "config.yaml").read_text(encoding="utf-8"):
        print(
            f"Edit the EDIT_ME values (partition, account) in {target / 'config.yaml'} once.",
            file=sys.stderr,
        )
    print(f"Run the workflow from the repository root with: snakemake --profile {args.name}")
    return 0
