"""A hundred policy changes, valid and invalid, under steady traffic.

A real server process watches a config directory while one thread sends
``ShouldRateLimit`` calls without pause. The test changes the ``probe``
rule's limit (a version number) a hundred times, every third change invalid,
alternating in-place writes and editor-style renames, and waits for each one
to be served (valid) or logged (invalid) before the next.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2

from harness.server import ServerProcess
from reload.live import VISIBLE_WITHIN, Seen, policy_yaml, replace_by_rename

DOMAIN = "load"
CHANGES = 100
INVALID_EVERY = 3
BASE = 1_000_000
"""Probe limits are BASE + version, so a limit names the policy that served it."""
PAUSE = 0.1
"""Seconds between a change being confirmed and the next change."""
TRAFFIC_DEADLINE = 90.0
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def _valid(version: int) -> str:
    return policy_yaml(DOMAIN, probe=BASE + version, steady=10**9)


def _invalid(change: int) -> str:
    """Fails on a unit named after the change, so its log line is unique."""
    return _valid(0).replace("unit: day", f"unit: fortnight_{change}", 1)


def _request() -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain=DOMAIN)
    probe = request.descriptors.add()
    probe.entries.add(key="generic_key", value="probe")
    probe.hits_addend.value = 0
    probe.hits_addend.SetInParent()
    request.descriptors.add().entries.add(key="generic_key", value="steady")

    return request


def _stub(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        SHOULD_RATE_LIMIT,
        request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
        response_deserializer=rls_pb2.RateLimitResponse.FromString,
    )


@dataclass
class Traffic:
    """Sequential calls on one channel until stopped; every answer checked."""

    server: ServerProcess
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    versions_seen: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10.0)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        request = _request()
        deadline = time.monotonic() + TRAFFIC_DEADLINE
        with self.server.channel() as channel:
            call = _stub(channel)
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._one(call, request)

    def _one(
        self, call: grpc.UnaryUnaryMultiCallable, request: rls_pb2.RateLimitRequest
    ) -> None:
        self.calls += 1
        try:
            response = call(request, timeout=2.0)
        except grpc.RpcError as error:
            self.failures.append(f"call {self.calls}: {error.code()}")
            return
        if response.overall_code != rls_pb2.RateLimitResponse.OK:
            self.failures.append(f"call {self.calls}: {response}")
            return
        version = (Seen.of(response.statuses[0]).limit or 0) - BASE
        if not self.versions_seen or self.versions_seen[-1] != version:
            self.versions_seen.append(version)


def _wait_served(call: grpc.UnaryUnaryMultiCallable, version: int) -> float:
    """Seconds until the probe limit is ``version``'s; fails after 2 s."""
    started = time.monotonic()
    request = _request()
    while True:
        seen = Seen.of(call(request, timeout=2.0).statuses[0])
        elapsed = time.monotonic() - started
        if seen.limit == BASE + version:
            return elapsed
        assert elapsed < VISIBLE_WITHIN, f"version {version} not served: {seen}"
        time.sleep(0.01)


def _wait_logged(server: ServerProcess, text: str) -> float:
    started = time.monotonic()
    while text not in server.log_path.read_text(errors="replace"):
        elapsed = time.monotonic() - started
        assert elapsed < VISIBLE_WITHIN, f"{text!r} not logged\n{server.describe()}"
        time.sleep(0.01)

    return time.monotonic() - started


def _reloads(server: ServerProcess, outcome: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5.0) as answer:
        text = answer.read().decode()
    pattern = rf'^ratelimit_ext_policy_reloads_total\{{[^}}]*outcome="{outcome}"'
    lines = [line for line in text.splitlines() if re.match(pattern, line)]
    assert len(lines) == 1, text

    return float(lines[0].rsplit(" ", 1)[1])


def test_hundred_reloads_under_steady_traffic(tmp_path: Path) -> None:
    """No call fails; each valid change is served within 2 s and each
    invalid one is rejected and logged once while the old limit is served."""
    config = tmp_path / "config"
    config.mkdir()
    policy = config / "policy.yaml"
    policy.write_text(_valid(0))
    served: list[float] = []
    rejected: list[float] = []
    version = 0

    with ServerProcess(config, tmp_path) as server, server.channel() as channel:
        probe = _stub(channel)
        traffic = Traffic(server)
        traffic.start()
        try:
            for change in range(1, CHANGES + 1):
                write = replace_by_rename if change % 2 else Path.write_text
                if change % INVALID_EVERY == 0:
                    write(policy, _invalid(change))
                    rejected.append(
                        _wait_logged(server, f"unknown unit 'fortnight_{change}'")
                    )
                    assert _wait_served(probe, version) < 0.1
                else:
                    version += 1
                    write(policy, _valid(version))
                    served.append(_wait_served(probe, version))
                time.sleep(PAUSE)
        finally:
            traffic.stop()
        ok, failed = _reloads(server, "ok"), _reloads(server, "failed")
        log = server.log_path.read_text(errors="replace")
    assert server.returncode == 0, log

    assert traffic.failures == []
    assert traffic.calls > 1000
    assert traffic.versions_seen == sorted(traffic.versions_seen)
    assert set(traffic.versions_seen) <= set(range(version + 1))
    assert (ok, failed) == (len(served), len(rejected))
    assert log.count("policy change rejected") == len(rejected)
    assert log.count("policy reloaded") == len(served)
    print(
        f"\n{traffic.calls} calls, 0 failed; {len(served)} valid changes served "
        f"in median {statistics.median(served) * 1000:.0f} ms, "
        f"max {max(served) * 1000:.0f} ms; {len(rejected)} invalid rejected "
        f"in median {statistics.median(rejected) * 1000:.0f} ms, "
        f"max {max(rejected) * 1000:.0f} ms"
    )
