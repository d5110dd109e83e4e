"""Compile this project's own protos (proto/**/*.proto) with grpcio-tools.

Envoy's APIs come precompiled from the ``xds-protos`` package; only protos
that ratelimit-ext defines itself live under ``proto/``. The generated
modules go to ``src/ratelimit_ext/_proto/`` and are committed.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "ratelimit_ext" / "_proto"


def main() -> int:
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if not sources:
        print("no protos under proto/")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={OUT_DIR}",
            f"--pyi_out={OUT_DIR}",
            f"--grpc_python_out={OUT_DIR}",
            *sources,
        ]
    )
    print(f"compiled {len(sources)} protos into {OUT_DIR.relative_to(ROOT)}")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
