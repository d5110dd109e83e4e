"""Numbered versions of ``generated/``, kept in ``generated/.history/``.

After every change to the generated files, a copy of all of them is kept as
the next version: ``generated/.history/v000007/`` holds ``meta.json`` (who,
what, when, the digest) and the files as they were then. The directory name
starts with a dot, so the policy loader never reads it. A version directory
is built under a temporary name and renamed into place, so a version is
complete or absent. The newest ``keep`` versions are kept.

Rolling back restores the files of an earlier version, and is itself a new
version that remembers which one it restored; "the version before" a
rollback is the one before the version it restored, so repeated rollbacks
keep stepping back instead of undoing each other.

Callers hold the config directory's lock (``PolicyDirectory.locked``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ratelimit_ext.admin.errors import Conflict, NotFound
from ratelimit_ext.admin.files import fsync_directory

GENERATED_DIR = "generated"
HISTORY_DIR = ".history"
_META = "meta.json"
_FILES = "files"
_PREFIX = "v"


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    created_at: float
    actor: str
    action: str
    files: tuple[str, ...]
    digest: str
    restored: int | None = None


def files_digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 over (name, bytes) pairs in name order, length-prefixed."""
    hasher = hashlib.sha256()
    for name in sorted(files):
        for part in (name.encode(), files[name]):
            hasher.update(len(part).to_bytes(8, "big"))
            hasher.update(part)

    return hasher.hexdigest()


class History:
    """The versions of one config directory's ``generated/`` files."""

    def __init__(self, config_dir: Path, keep: int = 50) -> None:
        if keep < 2:
            raise ValueError("history must keep at least 2 versions")
        self._root = config_dir / GENERATED_DIR / HISTORY_DIR
        self._keep = keep

    def versions(self) -> list[Version]:
        """Oldest first."""
        if not self._root.is_dir():
            return []
        found = [self._meta(path) for path in self._root.iterdir()]

        return sorted((v for v in found if v is not None), key=lambda v: v.number)

    def files_of(self, number: int) -> dict[str, bytes]:
        base = self._root / _dir_name(number) / _FILES
        if not base.parent.is_dir():
            raise NotFound(f"no version {number} in {self._root}")
        return {
            path.relative_to(base).as_posix(): path.read_bytes()
            for path in sorted(base.rglob("*"))
            if path.is_file()
        }

    def record(
        self,
        files: Mapping[str, bytes],
        actor: str,
        action: str,
        restored: int | None = None,
    ) -> Version:
        """Keep ``files`` (names relative to ``generated/``) as the next version."""
        versions = self.versions()
        number = versions[-1].number + 1 if versions else 1
        version = Version(
            number,
            time.time(),
            actor,
            action,
            tuple(sorted(files)),
            files_digest(files),
            restored,
        )
        self._root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self._root, prefix=".staging-"))
        try:
            for name, data in files.items():
                path = staging / _FILES / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            (staging / _FILES).mkdir(exist_ok=True)
            (staging / _META).write_text(json.dumps(asdict(version), indent=1))
            os.rename(staging, self._root / _dir_name(number))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_directory(self._root)
        self._prune([*versions, version])
        return version

    def rollback_target(self, to: int = 0) -> Version:
        """The version to restore: ``to``, or the one before the current one."""
        versions = self.versions()
        if to:
            for version in versions:
                if version.number == to:
                    return version
            raise NotFound(f"no version {to}; see ListVersions")
        if not versions:
            raise Conflict("no versions of generated/ yet: nothing to roll back")
        current = versions[-1]
        base = current.restored or current.number
        earlier = [v for v in versions if v.number < base]
        if not earlier:
            raise Conflict(f"version {base} is the oldest kept: nothing before it")
        return earlier[-1]

    def _meta(self, path: Path) -> Version | None:
        if not path.name.startswith(_PREFIX) or not path.name[1:].isdigit():
            return None
        try:
            raw = json.loads((path / _META).read_text())
            raw["files"] = tuple(raw["files"])
            return Version(**raw)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _prune(self, versions: list[Version]) -> None:
        for version in versions[: -self._keep]:
            shutil.rmtree(self._root / _dir_name(version.number), ignore_errors=True)


def _dir_name(number: int) -> str:
    return f"{_PREFIX}{number:06d}"
