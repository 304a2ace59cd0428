"""docs/guarantees.md names a test for every guarantee: each named test must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_named_test_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    named = re.findall(r"`((?:e2e|unit|integration|helm)/[\w/]+\.py)((?:::\w+)?)`", text)
    assert len(named) > 30
    for path, test in named:
        source = (ROOT / "tests" / path).read_text()
        if test:
            name = test.removeprefix("::")
            assert re.search(rf"def {name}\b", source), f"{path}::{name} does not exist"
    short = re.findall(r"`::(\w+)`", text)  # same file as the reference before it
    for name in short:
        assert any(
            re.search(rf"def {name}\b", p.read_text()) for p in (ROOT / "tests").rglob("*.py")
        ), name
