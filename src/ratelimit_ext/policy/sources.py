"""Finding and reading policy files, and the digest over what was read.

A path is either one file or a directory searched recursively for
``*.yaml`` and ``*.yml`` files; entries whose names start with a dot are
skipped at every level, and a symlink back up the tree is not walked
again. Every file that cannot be listed or read becomes a ``Problem``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ratelimit_ext.errors import Problem

_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file's bytes, with the name shown to users and the digest name."""

    display: str
    relative: str
    data: bytes


def read_sources(
    path: str | os.PathLike[str], problems: list[Problem]
) -> list[SourceFile]:
    """Every readable policy file at ``path``, in order of relative name."""
    given = os.fspath(path)
    root = Path(given)
    if root.is_dir():
        found = _walk_directory(root, given, problems)
    elif root.exists():
        found = [(root.name, given)]
    else:
        problems.append(Problem(given, 0, "no such file or directory"))
        return []
    sources = (_read_one(display, relative, problems) for relative, display in found)

    return [source for source in sources if source is not None]


def _walk_directory(
    root: Path, given: str, problems: list[Problem]
) -> list[tuple[str, str]]:
    """(relative name, display path) of every YAML file under ``root``, sorted."""
    found = _yaml_files(root, PurePosixPath(), frozenset(), problems)
    relatives = sorted(found, key=str)

    return [(str(rel), os.path.join(given, *rel.parts)) for rel in relatives]


def _yaml_files(
    directory: Path,
    relative: PurePosixPath,
    ancestors: frozenset[Path],
    problems: list[Problem],
) -> Iterator[PurePosixPath]:
    real = directory.resolve()
    if real in ancestors:
        return  # a symlink back up the tree: already being walked
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        problems.append(Problem(str(directory), 0, f"cannot list: {exc.strerror}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _yaml_files(
                entry, relative / entry.name, ancestors | {real}, problems
            )
        elif entry.suffix.lower() in _YAML_SUFFIXES:
            yield relative / entry.name


def _read_one(
    display: str, relative: str, problems: list[Problem]
) -> SourceFile | None:
    try:
        data = Path(display).read_bytes()
    except OSError as exc:
        problems.append(Problem(display, 0, f"cannot read: {exc.strerror}"))
        return None

    return SourceFile(display=display, relative=relative, data=data)


def digest(sources: Iterable[SourceFile]) -> str:
    """SHA-256 over the (relative name, bytes) pairs, in relative-name order."""
    hasher = hashlib.sha256()
    for source in sorted(sources, key=lambda s: s.relative):
        for part in (source.relative.encode("utf-8"), source.data):
            hasher.update(len(part).to_bytes(8, "big"))
            hasher.update(part)

    return hasher.hexdigest()
