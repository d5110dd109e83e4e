"""The admin building blocks without a server: YAML, history, writes, tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from admin.stack import write_config
from ratelimit_ext.admin.auth import TokenFile, bearer
from ratelimit_ext.admin.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PolicyRejected,
)
from ratelimit_ext.admin.files import PolicyDirectory, atomic_write, check_name
from ratelimit_ext.admin.grantbook import GrantBook, GrantRequest
from ratelimit_ext.admin.grants import GrantRecord, parse_grants, render_grants
from ratelimit_ext.admin.writer import PolicyWriter
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import (
    Algorithm,
    BypassMode,
    BypassSubject,
    Unit,
    Window,
)
from ratelimit_ext.store.base import CounterRequest
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.store.redis import RedisStore

NOW = 1_796_300_000.0


@pytest.mark.parametrize(
    "text", ["yes", "null", "a: b", "x #y", "123", "2026-12-03", "ünï", 'q"uote', "-"]
)
def test_grant_yaml_round_trips_awkward_strings(tmp_path: Path, text: str) -> None:
    """Anything YAML would read as another type or syntax is quoted."""
    record = GrantRecord(
        id="g-1",
        subject=BypassSubject(domain="api", descriptor=((text, text), ("k", None))),
        mode=BypassMode.PARTIAL,
        reason=text,
        actor=text,
        expires_at=NOW + 60,
        factor=1.5,
    )

    data = render_grants([record])
    (tmp_path / "bypass.yaml").write_bytes(data)

    assert parse_grants(data, "bypass.yaml") == [record]
    (grant,) = load_policy(tmp_path).bypass_grants
    assert grant.subject == record.subject and grant.reason == text


def test_rollback_steps_back_through_earlier_rollbacks(tmp_path: Path) -> None:
    """v1 initial, v2, v3; rollback -> v4 (=v2); rollback -> v5 (=v1)."""
    writer = PolicyWriter.for_directory(write_config(tmp_path / "config"))
    book = GrantBook(writer, clock=lambda: NOW)
    for who in ("a", "b"):
        book.grant(
            GrantRequest(BypassSubject(identity=who), BypassMode.FULL, "x", NOW + 60),
            actor="ops",
        )

    first = writer.rollback(0, "ops")
    second = writer.rollback(0, "ops")

    assert first.version is not None and first.version.restored == 2
    assert second.version is not None and second.version.restored == 1
    assert writer.generated_files() == {}
    with pytest.raises(Conflict, match="oldest"):
        writer.rollback(0, "ops")
    with pytest.raises(NotFound):
        writer.rollback(99, "ops")
    assert writer.rollback(3, "ops").after == {"files": ["bypass.yaml"], "version": 3}


def test_a_grant_the_loader_rejects_is_not_written(tmp_path: Path) -> None:
    """A descriptor grant naming an unknown field: rejected, file untouched."""
    config = write_config(tmp_path / "config")
    directory = PolicyDirectory(config)
    broken = b"bypass_grants:\n  - id: x\n    subject: {colour: red}\n"

    with pytest.raises(PolicyRejected) as rejected, directory.locked():
        directory.write({"generated/bypass.yaml": broken})

    assert rejected.value.problems[0].file == "generated/bypass.yaml"
    assert not (config / "generated" / "bypass.yaml").exists()


def test_self_approval_is_refused_whatever_the_case(tmp_path: Path) -> None:
    book = GrantBook(PolicyWriter.for_directory(write_config(tmp_path)), lambda: NOW)
    request = GrantRequest(
        BypassSubject(tier="pro"),
        BypassMode.FULL,
        "x",
        NOW + 60,
        requires_approval=True,
    )
    grant = book.grant(request, actor="Ops@Example.com").record

    with pytest.raises(Conflict, match="second actor"):
        book.approve(grant.id, " ops@example.com ")
    assert book.approve(grant.id, "lead").record.approved_by == "lead"
    with pytest.raises(Conflict, match="already approved"):
        book.approve(grant.id, "someone")


@pytest.mark.parametrize(
    "name",
    ["", "../x.yaml", "a/../b.yaml", ".x.yaml", "a/.h/b.yaml", "x.json", "/x.yaml"],
)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_name(name)


def test_atomic_write_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "policy.yaml"
    target.write_text("old")
    os.chmod(target, 0o640)

    atomic_write(target, b"new")

    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    tokens = TokenFile(path)

    assert tokens.matches("one") and not tokens.matches("two")
    path.write_text("two-longer")
    assert tokens.matches("two-longer") and not tokens.matches("one")
    path.write_text("")
    assert not tokens.matches("")
    path.unlink()
    assert tokens.current() is None
    with pytest.raises(ValueError, match="cannot read"):
        tokens.load()


def test_bearer_reads_only_the_authorization_header() -> None:
    assert bearer([("authorization", "Bearer abc ")]) == "abc"
    assert bearer([("authorization", "bearer abc")]) == "abc"
    assert bearer([("authorization", "Basic abc")]) is None
    assert bearer([("x-token", "Bearer abc")]) is None
    assert bearer(None) is None


@pytest.mark.parametrize(
    "kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)]
)
async def test_store_reset_forgets_only_the_given_subjects(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Every window of a reset subject starts again; other subjects keep theirs."""
    store: MemoryStore | RedisStore
    if kind == "redis":
        store = RedisStore(request.getfixturevalue("valkey").url)
    else:
        store = MemoryStore()
    windows = (
        Window(2, Unit.MINUTE),
        Window(5, Unit.HOUR, Algorithm.SLIDING_WINDOW),
        Window(3, Unit.DAY, Algorithm.TOKEN_BUCKET),
    )
    try:
        for subject in ("a", "b", "a"):
            await store.hit([CounterRequest(subject, windows)])

        removed = await store.reset(["a", "never-seen"])
        a, b = await store.hit(
            [CounterRequest("a", windows), CounterRequest("b", windows)]
        )

        assert removed == 3
        assert [w.remaining for w in a.windows] == [1, 4, 2]
        assert [w.remaining for w in b.windows] == [0, 3, 1]
    finally:
        await store.close()
