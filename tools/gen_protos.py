"""Generate the Python code of the authswitch.v1 protocol from protos/.

    python tools/gen_protos.py [--out DIR]

Writes messages (_pb2.py), gRPC stubs (_pb2_grpc.py) and their typed stubs (.pyi, by
mypy-protobuf) under DIR/authswitch/v1 (default: src). tests/unit/test_generated_code.py
regenerates into a temporary directory and fails when the committed code drifts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE_DIR = Path("authswitch") / "v1"
INIT = '"""Generated from protos/authswitch/v1 by tools/gen_protos.py; do not edit."""\n'


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto file and return the files written, sorted."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE_DIR).glob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTOS / PACKAGE_DIR}")
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    plugins = [
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
    ]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        *plugins,
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    cwd = os.getcwd()
    os.chdir(PROTOS)  # protoc records paths relative to the include root
    try:
        code = protoc.main(args)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    (out / PACKAGE_DIR / "__init__.py").write_text(INIT)
    return sorted(p for p in (out / PACKAGE_DIR).iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "src")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))


if __name__ == "__main__":
    main()
