"""All or nothing: a rejected request consumes none of its descriptors.

The engine runs on the memory store and, for the descriptors' counters, on
real Redis and Redis Cluster too (the ``store`` fixture). What each store
does with a group is tested in ``store/test_groups.py``; here: which
descriptors bind, the domain switch and the server default, the over-limit
cache, the failure policy and the policy file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from harness.clock import FakeClock
from harness.ports import LOOPBACK, free_port
from harness.server import ServerProcess
from ratelimit_ext.counting import CountingSettings, LimitCounter
from ratelimit_ext.decision import DecisionEngine, DescriptorQuery, RateLimitQuery
from ratelimit_ext.errors import PolicyError
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledPolicy
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import FailurePolicy
from ratelimit_ext.store.base import Store
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.store.redis import RedisStore
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import Code, Verdict

POLICY = """
domain: {domain}
{switch}
descriptors:
  - key: user
    rate_limit: {{unit: minute, requests_per_unit: 10}}
  - key: route
    rate_limit: {{unit: minute, requests_per_unit: 2}}
  - key: watched
    shadow_mode: true
    rate_limit: {{unit: minute, requests_per_unit: 1}}
  - key: quota
    quota_mode: true
    rate_limit: {{unit: minute, requests_per_unit: 1}}
"""


def write_policy(directory: Path, switch: str = "all_or_nothing: true") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "api.yaml").write_text(
        textwrap.dedent(POLICY.format(domain="api", switch=switch))
    )
    return directory


def engine(
    directory: Path,
    store: Store,
    *,
    default: bool = False,
    shadow_mode: bool = False,
    failure_policy: FailurePolicy = FailurePolicy.UNAVAILABLE,
    clock: FakeClock | None = None,
) -> DecisionEngine:
    policy = ActivePolicy(CompiledPolicy.build(load_policy(directory)))
    telemetry = Telemetry.disabled()
    settings = CountingSettings(failure_policy=failure_policy, all_or_nothing=default)
    counter = LimitCounter(store, telemetry, settings, clock=clock or FakeClock())
    return DecisionEngine(policy, counter, telemetry, shadow_mode=shadow_mode)


def query(*entries: tuple[str, str]) -> RateLimitQuery:
    return RateLimitQuery("api", tuple(DescriptorQuery((e,)) for e in entries))


USER = ("user", "alice")
ROUTE = ("route", "/orders")


async def user_remaining(decisions: DecisionEngine) -> int:
    """What alice has left, read with a check-only request."""
    check = RateLimitQuery("api", (DescriptorQuery((USER,), hits=0),))
    verdict = await decisions.decide(check)
    return verdict.descriptors[0].remaining


def codes(verdict: Verdict) -> list[str]:
    return [d.code.name for d in verdict.descriptors]


async def test_a_rejected_request_consumes_none_of_its_descriptors(
    tmp_path: Path, store: Store
) -> None:
    decisions = engine(write_policy(tmp_path), store)

    answers = [await decisions.decide(query(USER, ROUTE)) for _ in range(4)]

    assert [a.code for a in answers] == [Code.OK, Code.OK] + [Code.OVER_LIMIT] * 2
    assert codes(answers[2]) == ["OK", "OVER_LIMIT"]
    assert answers[2].descriptors[0].remaining == 8  # not counted
    assert await user_remaining(decisions) == 8


async def test_without_the_switch_every_descriptor_is_consumed(
    tmp_path: Path, store: Store
) -> None:
    decisions = engine(write_policy(tmp_path, switch=""), store)

    for _ in range(4):
        await decisions.decide(query(USER, ROUTE))

    assert await user_remaining(decisions) == 6


async def test_the_server_default_applies_where_the_domain_is_silent(
    tmp_path: Path,
) -> None:
    silent = engine(write_policy(tmp_path, switch=""), MemoryStore(), default=True)
    off = engine(
        write_policy(tmp_path / "off", switch="all_or_nothing: false"),
        MemoryStore(),
        default=True,
    )

    for decisions in (silent, off):
        for _ in range(4):
            await decisions.decide(query(USER, ROUTE))

    assert await user_remaining(silent) == 8
    assert await user_remaining(off) == 6


@pytest.mark.parametrize("entry", [("watched", "x"), ("quota", "x")])
async def test_shadow_and_quota_mode_descriptors_do_not_withhold_the_others(
    tmp_path: Path, entry: tuple[str, str]
) -> None:
    decisions = engine(write_policy(tmp_path), MemoryStore())

    for _ in range(3):
        await decisions.decide(query(USER, entry))

    assert await user_remaining(decisions) == 7


async def test_under_the_global_shadow_mode_nothing_is_withheld(tmp_path: Path) -> None:
    decisions = engine(write_policy(tmp_path), MemoryStore(), shadow_mode=True)

    answers = [await decisions.decide(query(USER, ROUTE)) for _ in range(4)]

    assert {a.code for a in answers} == {Code.OK}
    assert await user_remaining(decisions) == 6


async def test_a_cached_rejection_answers_without_counting_the_others(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    store = MemoryStore(fake_clock)
    decisions = engine(write_policy(tmp_path), store, clock=fake_clock)
    for _ in range(3):  # the third is refused and remembered
        await decisions.decide(query(USER, ROUTE))
    counters = len(store)

    cached = await decisions.decide(query(USER, ("route", "/orders")))

    assert cached.code is Code.OVER_LIMIT
    assert codes(cached) == ["OK", "OVER_LIMIT"]
    assert cached.descriptors[0].window is None  # not counted: no current limit
    assert len(store) == counters
    assert await user_remaining(decisions) == 8


async def test_the_local_failure_policy_withholds_too(tmp_path: Path) -> None:
    nothing_listens = RedisStore(f"redis://{LOOPBACK}:{free_port()}", timeout=1.0)
    decisions = engine(
        write_policy(tmp_path), nothing_listens, failure_policy=FailurePolicy.LOCAL
    )

    try:
        answers = [await decisions.decide(query(USER, ROUTE)) for _ in range(4)]
    finally:
        await nothing_listens.close()

    assert [a.code for a in answers] == [Code.OK, Code.OK] + [Code.OVER_LIMIT] * 2
    assert answers[3].descriptors[0].remaining == 8


def test_the_switch_must_be_true_or_false(tmp_path: Path) -> None:
    write_policy(tmp_path, switch="all_or_nothing: sometimes")

    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)

    assert "api.yaml:3" in str(caught.value)
    assert "'all_or_nothing' must be true or false" in str(caught.value)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_the_serve_command_sets_the_server_default(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_policy(tmp_path / "config", switch="")
    args: tuple[str, ...] = ("--all-or-nothing",) if how == "flag" else ()
    if how == "environment":
        monkeypatch.setenv("RATELIMIT_EXT_ALL_OR_NOTHING", "true")
    both = rls_pb2.RateLimitRequest(
        domain="api",
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)]
            )
            for k, v in (USER, ROUTE)
        ],
    )
    only_user = ratelimit_pb2.RateLimitDescriptor()
    only_user.CopyFrom(both.descriptors[0])
    only_user.hits_addend.value = 0  # check without counting
    check = rls_pb2.RateLimitRequest(domain="api", descriptors=[only_user])

    with (
        ServerProcess(config, tmp_path, metrics=False, extra_args=args) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        codes = [stub.ShouldRateLimit(both, timeout=5).overall_code for _ in range(4)]
        left = stub.ShouldRateLimit(check, timeout=5).statuses[0].limit_remaining

    over = rls_pb2.RateLimitResponse.OVER_LIMIT
    assert codes[2:] == [over, over]
    assert left == 8
