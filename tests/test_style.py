"""The code reads one way: ruff's formatter and lint rules (pyproject.toml), snakefmt for rules."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PYTHON = ["emflow", "scripts", "tests", "benchmarks"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def test_ruff_format_is_clean():
    result = run(sys.executable, "-m", "ruff", "format", "--check", *PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_is_clean():
    result = run(sys.executable, "-m", "ruff", "check", *PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules")
    assert result.returncode == 0, result.stdout + result.stderr


def _emflow_imports(path, root):
    """(module, line, imported emflow module, inside a function) for each import in `path`."""
    import ast

    module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inner = {id(n) for f in functions for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "emflow" or name.startswith("emflow."):
                yield module, node.lineno, name, id(node) in inner


def test_imports_run_one_way():
    """No import circle among emflow's modules, and no emflow import placed inside a function
    (a function-level import of a heavy optional dependency, torch say, is fine)."""
    root = REPO / "emflow"
    modules = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    edges = {m: set() for m in modules}
    inside = []
    for module, path in modules.items():
        for _, line, name, in_function in _emflow_imports(path, root):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if not name or name == module:
                continue
            edges[module].add(name)
            if in_function:
                inside.append(f"{module}:{line} -> {name}")
    assert inside == []
    # A cycle: a module reachable from one of the modules it imports.
    for start in modules:
        seen, stack = set(), list(edges[start])
        while stack:
            node = stack.pop()
            assert node != start, f"{start} is part of an import circle"
            if node not in seen:
                seen.add(node)
                stack.extend(edges[node])
