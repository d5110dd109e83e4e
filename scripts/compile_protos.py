"""Compile this project's own protos (proto/**/*.proto) with grpcio-tools.

Envoy's APIs come precompiled from the ``xds-protos`` package; only protos
that ratelimit-ext defines itself live under ``proto/``. The generated
modules go to ``src/ratelimit_ext/_proto/`` and are committed.

protoc names Python modules after the proto's path, so
``proto/ratelimit_ext/admin/v1/admin.proto`` becomes the module
``ratelimit_ext.admin.v1.admin_pb2``, which would clash with our own
``ratelimit_ext`` package. The files stay where protoc puts them (the proto
file names in the descriptor pool and in reflection stay
``ratelimit_ext/admin/v1/admin.proto``), and the imports between generated
modules are rewritten to their real place,
``ratelimit_ext._proto.ratelimit_ext.admin.v1``. Every generated directory
gets an ``__init__.py``.
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "ratelimit_ext" / "_proto"
PACKAGE = "ratelimit_ext._proto"


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
    if status == 0:
        _fix_imports(_top_packages())
        _add_init_files()
    print(f"compiled {len(sources)} protos into {OUT_DIR.relative_to(ROOT)}")
    return int(status)


def _top_packages() -> list[str]:
    """The first path parts of our protos: the module roots protoc imports from."""
    protos = PROTO_DIR.rglob("*.proto")
    return sorted({path.relative_to(PROTO_DIR).parts[0] for path in protos})


def _fix_imports(packages: list[str]) -> None:
    """Point imports of our generated modules at ``ratelimit_ext._proto``."""
    roots = "|".join(re.escape(name) for name in packages)
    # (?!...): a file rewritten before (a stale one protoc did not rewrite)
    pattern = re.compile(rf"^(from|import) ({roots})(?!\._proto\.)(\.| )", re.M)
    for path in [*OUT_DIR.rglob("*.py"), *OUT_DIR.rglob("*.pyi")]:
        text = path.read_text()
        fixed = pattern.sub(rf"\1 {PACKAGE}.\2\3", text)
        if fixed != text:
            path.write_text(fixed)


def _add_init_files() -> None:
    for directory in [OUT_DIR, *(p for p in OUT_DIR.rglob("*") if p.is_dir())]:
        if directory.name == "__pycache__":
            continue
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")


if __name__ == "__main__":
    sys.exit(main())
