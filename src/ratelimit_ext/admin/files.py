"""Changing the policy files of a watched config directory, safely.

Every change is a set of named files to write or remove. Before anything is
written, the whole resulting set (the directory's files with the change made)
is validated by the real loader, in a scratch copy outside the watched
directory. Then each file is written atomically: a temporary file in the same
directory (its name starts with a dot, so the loader skips it), ``fsync``,
``rename`` over the target, ``fsync`` of the directory. A reader therefore
sees the old file or the new one, never a half-written one. Changes from
several processes (servers sharing the directory, the control plane) are
serialized by an exclusive ``flock`` on ``.ratelimit-ext.lock`` in the
directory.

Everything here blocks; the async callers run it in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ratelimit_ext.admin.errors import (
    Conflict,
    DigestMismatch,
    InvalidRequest,
    PolicyRejected,
)
from ratelimit_ext.errors import PolicyError, Problem
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.sources import SourceFile, digest, read_sources

LOCK_FILE = ".ratelimit-ext.lock"
_YAML_SUFFIXES = (".yaml", ".yml")

Changes = Mapping[str, bytes | None]
"""File name (relative, ``/``-separated) -> new content, or ``None`` to remove."""


@dataclass(frozen=True, slots=True)
class Validation:
    """The problems of a resulting set (names relative), and its digest."""

    problems: tuple[Problem, ...]
    digest: str

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Written:
    previous_digest: str
    digest: str
    before: dict[str, bytes | None]


def check_name(name: str) -> str:
    """A policy file name relative to the config directory, or ``InvalidRequest``."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute():
        raise InvalidRequest(f"file name {name!r}: must be a relative path")
    if any(part in ("", "..") or part.startswith(".") for part in path.parts):
        raise InvalidRequest(
            f"file name {name!r}: no '..' and no hidden parts (the loader skips them)"
        )
    if path.suffix.lower() not in _YAML_SUFFIXES:
        raise InvalidRequest(f"file name {name!r}: must end in .yaml or .yml")

    return str(path)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temp file, fsync, rename, fsync directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


def remove(path: Path) -> None:
    path.unlink()
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PolicyDirectory:
    """The watched config directory, as the admin API changes it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self) -> dict[str, bytes]:
        """Every policy file the loader would read: relative name -> bytes."""
        return self._read([])

    def digest(self) -> str:
        return _digest_of(self.files())

    def validate(self, changes: Changes, *, standalone: bool = False) -> Validation:
        """The resulting set's problems; ``standalone``: the changed files alone."""
        problems: list[Problem] = []
        base = {} if standalone else self._read(problems)
        return _validate_change(base, changes, problems)

    def write(
        self,
        changes: Changes,
        *,
        expected_digest: str = "",
        replace_under: str = "",
    ) -> Written:
        """Validate the resulting set, then write it. Hold ``locked()`` around it.

        ``replace_under``: also remove every other file under that directory.
        Raises ``PolicyRejected`` (nothing written), ``DigestMismatch``,
        ``Conflict`` (not a writable directory), or ``OSError``.
        """
        self._check_writable()
        problems: list[Problem] = []
        current = self._read(problems)
        if expected_digest and _digest_of(current) != expected_digest:
            raise DigestMismatch(
                f"the policy files changed: digest {_digest_of(current)[:12]}, "
                f"expected {expected_digest[:12]}"
            )
        changes = _with_replacement(current, changes, replace_under)
        validation = _validate_change(current, changes, problems)
        if not validation.valid:
            raise PolicyRejected(list(validation.problems))
        before = {name: current.get(name) for name in changes}
        self._write(changes, current)

        return Written(_digest_of(current), validation.digest, before)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes and threads (one open file each)."""
        self._check_writable()
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, problems: list[Problem]) -> dict[str, bytes]:
        """The files, and a problem for each one that cannot be read."""
        if not self.root.is_dir():
            return {}
        sources = read_sources(self.root, problems)
        return {source.relative: source.data for source in sources}

    def _check_writable(self) -> None:
        if not self.root.is_dir():
            raise Conflict(
                f"the config {self.root} is not a directory; admin changes need one"
            )

    def _write(self, changes: Changes, current: Mapping[str, bytes]) -> None:
        real_root = os.path.realpath(self.root)
        for name, data in changes.items():
            target = self.root / name
            parent = os.path.realpath(target.parent)
            if os.path.commonpath([real_root, parent]) != real_root:
                raise Conflict(f"{name}: its directory is outside {self.root}")
            if data is not None:
                atomic_write(target, data)
            elif name in current:
                remove(target)


def _with_replacement(
    current: Mapping[str, bytes], changes: Changes, replace_under: str
) -> dict[str, bytes | None]:
    result = dict(changes)
    if not replace_under:
        return result
    prefix = PurePosixPath(replace_under.strip("/"))
    for name in current:
        if PurePosixPath(name).is_relative_to(prefix) and name not in result:
            result[name] = None
    return result


def _validate_change(
    base: Mapping[str, bytes], changes: Changes, problems: list[Problem]
) -> Validation:
    for name, data in changes.items():
        if data is None and name not in base:
            problems.append(Problem(name, 0, "no such policy file to remove"))
    return _validate(_changed(base, changes), problems)


def _changed(base: Mapping[str, bytes], changes: Changes) -> dict[str, bytes]:
    files = dict(base)
    for name, data in changes.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    return files


def _validate(files: Mapping[str, bytes], problems: list[Problem]) -> Validation:
    """Load ``files`` with the real loader, from a scratch directory."""
    with tempfile.TemporaryDirectory(prefix="ratelimit-ext-validate-") as scratch:
        for name, data in files.items():
            path = Path(scratch, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            load_policy(scratch)
        except PolicyError as exc:
            problems.extend(_relative(problem, scratch) for problem in exc.problems)

    ordered = sorted(problems, key=lambda p: (p.file, p.line))
    return Validation(tuple(ordered), _digest_of(files))


def _relative(problem: Problem, scratch: str) -> Problem:
    prefix = scratch + os.sep
    if not problem.file.startswith(prefix):
        return problem
    name = problem.file[len(prefix) :].replace(os.sep, "/")

    return Problem(name, problem.line, problem.message)


def _digest_of(files: Mapping[str, bytes]) -> str:
    """The reloader's digest of these files (relative names and bytes)."""
    return digest(SourceFile(name, name, data) for name, data in files.items())
