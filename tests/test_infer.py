"""Inference on its own floor: nothing that runs a trained model imports training.

Batch generation, `l2s speak`, the endpoint, dubbing and scoring run where `l2s.train` (Ray Train,
DeepSpeed, TensorBoard) has no business; they reach checkpoints, the speaker table and the crop
through `l2s.infer` and `l2s.models`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import l2s

PACKAGE = Path(l2s.__file__).parent
# The run-time modules, and every module inside these packages.
RUN_TIME = ("l2s.infer", "l2s.serve", "l2s.dub", "l2s.pipeline.generate", "l2s.evaluate")


def _source(module: str) -> Path | None:
    path = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _modules_under(name: str) -> list[str]:
    source = _source(name)
    if source is None or source.name != "__init__.py":
        return [name]
    return [
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in sorted(source.parent.rglob("*.py"))
    ]


def _imports(module: str) -> set[str]:
    """The l2s modules that a module's source imports anywhere, inside functions too (lazy
    imports run at run time as well), with the packages above them."""
    tree = ast.parse(_source(module).read_text())
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            named.add(node.module)
            named.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in named:
        parts = name.split(".")
        for n in range(1, len(parts) + 1):
            prefix = ".".join(parts[:n])
            if parts[0] == "l2s" and _source(prefix) is not None:
                found.add(prefix)
    return found


def test_nothing_that_runs_a_model_imports_training() -> None:
    start = [m for name in RUN_TIME for m in _modules_under(name)]
    assert "l2s.infer.model" in start and "l2s.serve.deployments" in start
    reached_from: dict[str, str | None] = dict.fromkeys(start)
    todo = list(start)
    while todo:
        module = todo.pop()
        for imported in _imports(module) - reached_from.keys():
            reached_from[imported] = module
            todo.append(imported)
    for module in reached_from:
        if module == "l2s.train" or module.startswith("l2s.train."):
            chain = [module]
            while reached_from[chain[-1]] is not None:
                chain.append(reached_from[chain[-1]])
            raise AssertionError(f"run time imports training: {' ← '.join(chain)}")


def test_importing_the_run_time_loads_no_training_module() -> None:
    modules = [m for name in RUN_TIME for m in _modules_under(name)]
    script = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['l2s', 'train']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
