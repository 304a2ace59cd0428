"""make serve installs what serving needs, and only that; the tools come with make test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def _planned(target: str, venv: Path) -> list[str]:
    """The commands ``make <target>`` would run on a fresh clone (a virtualenv not made yet)."""
    finished = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return finished.stdout.splitlines()


def _installs(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c and "--upgrade pip" not in c]


@pytest.mark.parametrize("target", ["serve", "demo"])
def test_serving_installs_no_development_extras(target: str, tmp_path: Path) -> None:
    commands = _planned(target, tmp_path / "venv")
    installs = _installs(commands)
    assert installs, commands
    assert all(c.endswith(" -e .") for c in installs), installs
    assert not any("[dev]" in c for c in commands)


@pytest.mark.parametrize("target", ["pytest", "lint", "typecheck", "proto", "bench-quick"])
def test_development_targets_install_the_extras(target: str, tmp_path: Path) -> None:
    installs = _installs(_planned(target, tmp_path / "venv"))
    assert installs[-1].endswith(" -e '.[dev]'"), installs


@pytest.mark.parametrize("target", ["test", "bench", "bench-quick", "soak"])
def test_tool_targets_install_what_they_run_with(target: str, tmp_path: Path) -> None:
    """On a fresh clone these targets first make the virtualenv with the development
    extras (the benchmark and soak tools import them); none assumes one is there."""
    commands = _planned(target, tmp_path / "venv")
    assert any("[dev]" in c for c in _installs(commands)), commands
