"""The committed protobuf code is what tools/gen_protos.py makes from protos/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "authswitch" / "v1").iterdir()}
    committed = {
        p.name: p.read_bytes()
        for p in (ROOT / "src" / "authswitch" / "v1").iterdir()
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    assert sorted(fresh) == sorted(committed), "run `make proto`"
    drifted = [name for name in fresh if fresh[name] != committed[name]]
    assert not drifted, f"generated code drifted from protos/: {drifted}; run `make proto`"


def test_buf_style_enum_zero_values() -> None:
    spec = importlib.util.find_spec("authswitch.v1.common_pb2")
    assert spec is not None
    from authswitch.v1 import authorization_pb2, common_pb2, ledger_admin_pb2

    for module in (common_pb2, authorization_pb2, ledger_admin_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), zero
            prefix = zero.removesuffix("UNSPECIFIED")
            assert all(v.name.startswith(prefix) for v in enum.values), enum.name
