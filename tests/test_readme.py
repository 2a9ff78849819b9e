"""The README stays true: CI runs its test command as written, and every `l2s` command line in its
code blocks names a real command with options that parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from l2s.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_lines() -> list[str]:
    """Lines of the README's ```bash blocks, without trailing comments."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split(" # ")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_the_readme_leads_with_two_commands_and_ci_runs_the_second() -> None:
    install, tests = code_lines()[:2]
    assert install.startswith("pip install -e .") and install.endswith("l2s demo")
    assert tests.startswith('pip install -e ".[test]"') and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize(
    "line", [line for line in code_lines() if line.startswith("l2s ") and "[" not in line]
)
def test_every_l2s_command_in_the_readme_parses(line: str) -> None:
    group = typer.main.get_command(app)
    args = shlex.split(line)[1:]
    name, rest = args[0], args[1:]
    assert name in group.commands, f"no command `l2s {name}`"
    command = group.commands[name]
    try:
        command.make_context(name, rest)
    except click.UsageError as e:  # pragma: no cover - the failure message is the point
        pytest.fail(f"{line}: {e}")
