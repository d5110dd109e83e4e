"""Every change to a config directory, with its version history.

``PolicyWriter`` is the one way admin calls and the control plane change
policy files: under the directory's lock it validates the whole resulting set
(``PolicyDirectory.write``) and, when the change touched ``generated/``,
keeps the new state of ``generated/`` as a version (``History``). The first
change to ``generated/`` first keeps what was there before (possibly
nothing) as version 1, so it can be rolled back to.

Blocking; async callers run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ratelimit_ext.admin.files import Changes, PolicyDirectory, Written
from ratelimit_ext.admin.history import GENERATED_DIR, History, Version, files_digest


@dataclass(frozen=True, slots=True)
class Change:
    """What one mutating call did: for its reply and its audit record."""

    target: str
    before: Any
    after: Any
    digest: str
    previous_digest: str
    version: Version | None = None


class PolicyWriter:
    """Validated, atomic, versioned changes to one config directory."""

    def __init__(self, directory: PolicyDirectory, history: History) -> None:
        self.directory = directory
        self.history = history

    @classmethod
    def for_directory(cls, root: Path, keep_versions: int = 50) -> PolicyWriter:
        return cls(PolicyDirectory(root), History(root, keep_versions))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the directory's lock: read, decide and ``write`` inside."""
        with self.directory.locked():
            yield

    def generated_files(self) -> dict[str, bytes]:
        """The files of ``generated/``, named relative to it."""
        prefix = GENERATED_DIR + "/"
        return {
            name[len(prefix) :]: data
            for name, data in self.directory.files().items()
            if name.startswith(prefix)
        }

    def write(
        self,
        changes: Changes,
        *,
        actor: str,
        action: str,
        expected_digest: str = "",
        replace_under: str = "",
        restored: int | None = None,
    ) -> tuple[Written, Version | None]:
        """Inside ``transaction()``: validate, write, keep a version if needed."""
        touches = any(_generated(name) for name in changes) or (
            replace_under != "" and _generated(replace_under + "/x")
        )
        if touches and not self.history.versions():
            self.history.record(self.generated_files(), "-", "initial")
        written = self.directory.write(
            changes, expected_digest=expected_digest, replace_under=replace_under
        )
        version = None
        if touches:
            files = self.generated_files()
            version = self.history.record(files, actor, action, restored)
        return written, version

    def rollback(self, to: int, actor: str) -> Change:
        """Restore ``generated/`` as it was in version ``to`` (0: the one before)."""
        with self.transaction():
            target = self.history.rollback_target(to)
            wanted = self.history.files_of(target.number)
            current = self.generated_files()
            changes: dict[str, bytes | None] = {
                f"{GENERATED_DIR}/{name}": data for name, data in wanted.items()
            }
            for name in current.keys() - wanted.keys():
                changes[f"{GENERATED_DIR}/{name}"] = None
            written, version = self.write(
                changes,
                actor=actor,
                action=f"rollback to {target.number}",
                restored=target.number,
            )
        return Change(
            target=GENERATED_DIR,
            before={"digest": files_digest(current), "files": sorted(current)},
            after={"version": target.number, "files": sorted(wanted)},
            digest=written.digest,
            previous_digest=written.previous_digest,
            version=version,
        )


def _generated(name: str) -> bool:
    return PurePosixPath(name).parts[:1] == (GENERATED_DIR,)
