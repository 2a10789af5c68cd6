"""Generate the gRPC/protobuf Python stubs from ``proto/`` (run by ``make proto``).

The stubs are build output: they land in ``shared/v1`` (the ``pasu.v1`` package,
matching the proto package ``pasu.v1``) and are never edited or committed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
OUT = Path(__file__).resolve().parent / "v1"


def generate(proto_root: Path = PROTO_ROOT, out: Path = OUT) -> list[Path]:
    """Compile every ``pasu/v1/*.proto`` under ``proto_root`` into ``out``."""
    protos = sorted((proto_root / "pasu" / "v1").glob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "__init__.py").write_text('"""Generated from proto/pasu/v1 by pasu.protogen; do not edit."""\n')
    if not protos:
        log.warning("no .proto files under %s", proto_root)
        return []
    well_known = str(resources.files("grpc_tools") / "_proto")  # locates the package without importing protoc
    with tempfile.TemporaryDirectory() as tmp:
        # protoc runs in its own interpreter: grpc_tools carries a C++ protobuf runtime that
        # clashes with sentencepiece's in one process (sentencepiece then aborts the process).
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in protos],
        ]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc failed on {', '.join(map(str, protos))}: {r.stderr.strip()}")
        produced = sorted((Path(tmp) / "pasu" / "v1").iterdir())
        for f in produced:
            shutil.copy2(f, out / f.name)
    return [out / f.name for f in produced]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files = generate()
    log.info("generated %d files in %s", len(files), OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
