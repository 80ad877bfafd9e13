"""Generate the Python stubs for protos/parley/v1 next to the .proto files.

One function serves `make protos` and the drift test, so the committed stubs are checked against
exactly the command that writes them.

Besides the stubs, protoc writes `descriptor_set.binpb`: a FileDescriptorSet of the contract
(and the well-known types it imports) *with* `source_code_info`, i.e. the .proto comments. The
generated `_pb2.py` modules embed their descriptors without it, so server reflection built on
them alone would show `grpcurl describe` users no comments; the server serves this set instead
(server/rpc/reflection.py), and docs/api-reference.md is rendered from it (protos/apidoc.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "parley" / "v1"
DESCRIPTOR_SET = "descriptor_set.binpb"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi", DESCRIPTOR_SET)


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools) with the mypy-protobuf plugins; return the files written."""
    (out_root / "parley" / "v1").mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        f"--descriptor_set_out={out_root / 'parley' / 'v1' / DESCRIPTOR_SET}",
        "--include_source_info",
        "--include_imports",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT, env=env)
    return sorted(
        p for p in (out_root / "parley" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )


def stale_files() -> list[str]:
    """Names of committed stubs that differ from a fresh generation (or are missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    committed = {
        p.name: p.read_bytes() for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    }
    names = set(fresh) | set(committed)
    return sorted(n for n in names if fresh.get(n) != committed.get(n))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        written = generate(Path(tmp))
        for old in PACKAGE_DIR.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
        for path in written:
            shutil.copy2(path, PACKAGE_DIR / path.name)
    print(f"generated {len(written)} files in {PACKAGE_DIR.relative_to(PROTO_ROOT.parent)}")


if __name__ == "__main__":
    main()
