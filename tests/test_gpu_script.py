"""benchmarks/gpu.sh, the parts a CPU machine can check: its arguments, and its dry run (what it
would run, the files and modules it needs). The GPU run itself needs a GPU machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["--minutes"], "[--dry-run]"),
        (["--minutes", "soon", "--dry-run"], "--minutes takes a number"),
    ],
)
def test_bad_arguments_are_refused_with_the_usage(args: list[str], says: str) -> None:
    done = run(*args)
    assert done.returncode == 2 and says in done.stderr


def test_dry_run_prints_the_plan_and_checks_what_it_needs() -> None:
    done = run("--dry-run", "--minutes", "0.25")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    install = (
        'pip install -e ".[test]" && pip install --no-deps resemblyzer==0.1.4 face-alignment==1.5.0'
    )
    assert f"  {install}" in lines  # the project's own install: the README's (the script checks)
    assert any(line.startswith("  python -m pytest -q -m gpu") for line in lines)
    assert "  python benchmarks/gpu.py --minutes 0.25" in lines
    for row in ("base zero-2 bf16", "large zero-3 bf16", "hifigan v1", "face_alignment"):
        assert any(line.strip().startswith(row) for line in lines), row
    assert "every module imports" in done.stdout
