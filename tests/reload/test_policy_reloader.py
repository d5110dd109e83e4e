"""Hot reload with the real watcher, real files and an in-process sidecar."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from harness.ports import LOOPBACK, free_port
from ratelimit_ext.cli import build_parser
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledPolicy
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.reload import PolicyReloader, ReloadSettings
from ratelimit_ext.server import ServeSettings, Sidecar
from ratelimit_ext.telemetry import Telemetry
from reload.live import (
    VISIBLE_WITHIN,
    ConfigMapVolume,
    StartLive,
    policy_yaml,
    replace_by_rename,
)

RELOAD_LOGGER = "ratelimit_ext.policy.reload"
SETTLE = 0.5
"""Seconds to let events that must change nothing arrive (quiet period: 0.1 s)."""

BAD_UNIT = policy_yaml(probe=5).replace("unit: day", "unit: fortnight")


def _messages(caplog: pytest.LogCaptureFixture, starting: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == RELOAD_LOGGER and record.getMessage().startswith(starting)
    ]


def _config_path(directory: Path, mode: str) -> Path:
    return directory if mode == "directory" else directory / "policy.yaml"


@pytest.fixture(autouse=True)
def _reload_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RELOAD_LOGGER)


@pytest.mark.parametrize("mode", ["directory", "file"])
async def test_edit_in_place_is_served_within_two_seconds(
    tmp_path: Path, start_live: StartLive, mode: str
) -> None:
    """A file rewritten in place is in force within 2 s, watched either way."""
    (tmp_path / "policy.yaml").write_text(policy_yaml(probe=5))
    live = await start_live(_config_path(tmp_path, mode))
    assert (await live.look()).limit == 5
    before = live.status

    (tmp_path / "policy.yaml").write_text(policy_yaml(probe=6))

    await live.wait_for_limit(6)
    after = live.status
    assert after.reloads == 1
    assert after.digest != before.digest
    assert after.loaded_at > before.loaded_at


@pytest.mark.parametrize("mode", ["directory", "file"])
async def test_editor_write_and_rename_is_served(
    tmp_path: Path, start_live: StartLive, mode: str
) -> None:
    """An editor's save (temporary file renamed over the original) is picked up."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(probe=5))
    live = await start_live(_config_path(tmp_path, mode))

    replace_by_rename(policy, policy_yaml(probe=7))
    await live.wait_for_limit(7)
    replace_by_rename(policy, policy_yaml(probe=8))
    await live.wait_for_limit(8)

    assert live.status.reloads == 2
    assert live.sidecar.policy.current.policy.files == (str(policy),)


async def test_deleted_file_takes_its_domain_away(
    tmp_path: Path, start_live: StartLive
) -> None:
    """Deleting one file of a directory removes its domain; the rest stays."""
    (tmp_path / "api.yaml").write_text(policy_yaml(probe=5))
    (tmp_path / "other.yaml").write_text(policy_yaml("other", probe=9))
    live = await start_live(tmp_path)
    assert (await live.look(domain="other")).limit == 9

    (tmp_path / "other.yaml").unlink()

    await live.wait_for_limit(None, domain="other")
    assert (await live.look()).limit == 5
    assert live.status.reloads == 1


async def test_deleted_single_file_keeps_the_last_good_policy(
    tmp_path: Path, start_live: StartLive
) -> None:
    """A watched file that disappears is a rejected change until it is back."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(probe=5))
    live = await start_live(policy)

    policy.unlink()
    status = await live.wait_for_status(lambda s: s.rejections == 1)
    assert status.problems == (f"{policy}:0: no such file or directory",)
    assert (await live.look()).limit == 5

    policy.write_text(policy_yaml(probe=6))
    await live.wait_for_limit(6)
    assert live.status.problems == ()


@pytest.mark.parametrize("mode", ["directory", "file"])
async def test_configmap_update_reloads_once(
    tmp_path: Path,
    start_live: StartLive,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    """Kubelet's update (new ..timestamp dir, ..data swap, old dir removed)
    is one reload, and the hidden copies are never read."""
    volume = ConfigMapVolume(tmp_path / "configmap")
    volume.publish({"policy.yaml": policy_yaml(probe=5)})
    live = await start_live(_config_path(volume.root, mode))

    for limit in (6, 7):
        volume.publish({"policy.yaml": policy_yaml(probe=limit)})
        await live.wait_for_limit(limit)
        await asyncio.sleep(SETTLE)

    assert live.status.reloads == 2
    assert live.status.rejections == 0
    assert len(_messages(caplog, "policy reloaded")) == 2
    assert live.sidecar.policy.current.policy.files == (
        str(volume.root / "policy.yaml"),
    )


async def test_invalid_edit_keeps_policy_and_is_logged_once(
    tmp_path: Path, start_live: StartLive, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad edit is rejected and logged once, however often it is saved;
    the last good policy is served until a fix is applied."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(probe=5))
    live = await start_live(tmp_path)
    good = live.status.digest

    policy.write_text(BAD_UNIT)
    status = await live.wait_for_status(lambda s: s.rejections == 1)
    for _ in range(3):
        policy.write_text(BAD_UNIT)
        await asyncio.sleep(SETTLE / 3)
    await asyncio.sleep(SETTLE)

    assert live.status == status
    assert status.digest == good
    assert len(status.problems) == 1
    assert status.problems[0].startswith(f"{policy}:5: unknown unit 'fortnight'")
    assert _messages(caplog, "policy rejected: ") == [
        f"policy rejected: {status.problems[0]}"
    ]
    assert (await live.look()).limit == 5

    policy.write_text(policy_yaml(probe=6))
    await live.wait_for_limit(6)
    assert live.status.problems == ()
    assert live.status.rejected_digest is None


async def test_reverting_a_bad_edit_clears_the_rejection(
    tmp_path: Path, start_live: StartLive
) -> None:
    """Going back to the files in force clears the error without a reload."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(probe=5))
    live = await start_live(tmp_path)

    policy.write_text(BAD_UNIT)
    await live.wait_for_status(lambda s: s.rejections == 1)
    policy.write_text(policy_yaml(probe=5))
    status = await live.wait_for_status(lambda s: s.rejected_digest is None)

    assert status.reloads == 0
    assert status.problems == ()


async def test_counters_survive_a_reload(tmp_path: Path, start_live: StartLive) -> None:
    """An unchanged rule keeps its count; a changed limit counts on in its window."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(steady=10, probe=10))
    live = await start_live(tmp_path)
    for _ in range(3):
        await live.hit("steady")
        await live.hit("probe")

    policy.write_text(policy_yaml(steady=10, probe=20, added=1))
    await live.wait_for_limit(20)

    assert (await live.hit("steady")).remaining == 10 - 4
    assert (await live.hit("probe")).remaining == 20 - 4
    assert (await live.look("added")).limit == 1


async def test_no_watch_builds_no_reloader(tmp_path: Path) -> None:
    """``watch=False`` (``--no-watch``): the policy loaded at start stays."""
    (tmp_path / "policy.yaml").write_text(policy_yaml(probe=5))
    settings = ServeSettings(
        config=tmp_path,
        listen=f"{LOOPBACK}:{free_port()}",
        metrics_listen=None,
        watch=False,
    )
    sidecar = Sidecar(settings)
    await sidecar.start()
    try:
        assert sidecar.reloader is None
    finally:
        await sidecar.stop()


@pytest.mark.parametrize(
    ("env", "flags", "watch"),
    [
        (None, [], True),
        ("false", [], False),
        ("0", [], False),
        (None, ["--no-watch"], False),
        ("false", ["--watch"], True),
    ],
)
def test_watch_flag_and_environment(
    monkeypatch: pytest.MonkeyPatch, env: str | None, flags: list[str], watch: bool
) -> None:
    """Watching is on by default; ``RATELIMIT_EXT_WATCH`` or a flag turns it off,
    and a flag beats the environment."""
    if env is None:
        monkeypatch.delenv("RATELIMIT_EXT_WATCH", raising=False)
    else:
        monkeypatch.setenv("RATELIMIT_EXT_WATCH", env)

    args = build_parser().parse_args(["serve", "--config", "policy.yaml", *flags])

    assert args.watch is watch


@pytest.fixture
async def reloader_for() -> AsyncIterator[Callable[..., Awaitable[PolicyReloader]]]:
    """A bare reloader over an ``ActivePolicy`` (no server), with fast timers."""
    started: list[PolicyReloader] = []

    async def start(path: Path, **timers: float) -> PolicyReloader:
        active = ActivePolicy(CompiledPolicy.build(load_policy(path)))
        reloader = PolicyReloader(
            path, active, Telemetry.disabled(), ReloadSettings(**timers)
        )
        await reloader.start()
        started.append(reloader)
        return reloader

    yield start
    for reloader in started:
        await reloader.stop()


async def _wait_reloads(reloader: PolicyReloader, reloads: int) -> None:
    deadline = time.monotonic() + VISIBLE_WITHIN
    while reloader.status.reloads < reloads:
        assert time.monotonic() < deadline, reloader.status
        await asyncio.sleep(0.02)


async def test_replaced_directory_is_watched_again(
    tmp_path: Path, reloader_for: Callable[..., Awaitable[PolicyReloader]]
) -> None:
    """A config directory removed and created again is picked up again."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "policy.yaml").write_text(policy_yaml(probe=5))
    reloader = await reloader_for(config, retry_seconds=0.2)

    shutil.rmtree(config)
    await asyncio.sleep(SETTLE)
    config.mkdir()
    (config / "policy.yaml").write_text(policy_yaml(probe=6))
    await _wait_reloads(reloader, 1)
    (config / "policy.yaml").write_text(policy_yaml(probe=7))
    await _wait_reloads(reloader, 2)

    assert reloader.status.rejections == 1  # the moment it was missing


async def test_periodic_check_sees_what_the_watch_cannot(
    tmp_path: Path, reloader_for: Callable[..., Awaitable[PolicyReloader]]
) -> None:
    """A symlink to a file outside the watched directory: the periodic
    digest check finds the change."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "policy.yaml").write_text(policy_yaml(probe=5))
    config = tmp_path / "config"
    config.mkdir()
    (config / "policy.yaml").symlink_to(outside / "policy.yaml")
    reloader = await reloader_for(config, recheck_seconds=0.3)

    (outside / "policy.yaml").write_text(policy_yaml(probe=6))

    await _wait_reloads(reloader, 1)
