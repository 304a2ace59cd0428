"""The layers' import rules (issue 19, item 2; README "Layout"): the domain is pure, and the
service layer speaks neither protobuf nor gRPC nor a database driver. A module breaking a
rule fails here with the import that breaks it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "authswitch"

DRIVERS = ("asyncpg", "redis", "grpc", "grpc_health", "google.protobuf", "authswitch.v1")
RULES = {
    # layer: the imports it may not make
    "domain": (*DRIVERS, "authswitch.adapters", "authswitch.service", "authswitch.app"),
    "service": (*DRIVERS, "authswitch.adapters.grpc", "authswitch.app"),
}


def imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def breaches(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        name
        for name in imported(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(RULES))
def test_no_layer_imports_what_it_may_not(layer: str) -> None:
    found = {
        str(path.relative_to(PACKAGE)): bad
        for path in modules(layer)
        if (bad := breaches(path, RULES[layer]))
    }
    assert found == {}


def test_the_rule_finds_a_breach() -> None:
    assert breaches(PACKAGE / "adapters" / "grpc" / "codec" / "common.py", DRIVERS)
