"""The layers' import rules (issue 19, item 2; README "Layout"): the domain is pure, the
service layer speaks neither protobuf nor gRPC nor a database driver, and the gRPC adapter
(its servicers and codec) reads no type of the Postgres or Redis adapter: what it encodes is
a domain type. A module breaking a rule fails here with the import that breaks it."""

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
    "adapters/grpc": ("authswitch.adapters.postgres", "authswitch.adapters.redis"),
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
    # a store imports its own adapter: the gRPC adapter's rule would catch it there
    assert breaches(PACKAGE / "adapters" / "postgres" / "holds.py", RULES["adapters/grpc"])


@pytest.mark.parametrize("layer", sorted(RULES))
def test_every_rule_reads_modules_and_catches_each_import_it_forbids(
    layer: str, tmp_path: Path
) -> None:
    assert modules(layer)  # a rule over no module cannot fail
    module = tmp_path / "breach.py"
    for prefix in RULES[layer]:
        module.write_text(f"import {prefix}.x\nfrom {prefix} import y\nimport {prefix}ish\n")
        assert breaches(module, RULES[layer]) == [f"{prefix}.x", f"{prefix}.y"]
