"""Real HTTP through a real Envoy to ratelimit-ext and an echo upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from e2e.stack import (
    FREE_PER_MINUTE,
    PRO_PER_MINUTE,
    Edge,
    show,
    wait_for_window_room,
)
from harness.envoy import (
    AUTHZ_LIMITED_PREFIX,
    BUCKET_HEADER,
    BUCKET_PREFIX,
    EnvoyProcess,
    validate_config,
)
from harness.server import ServerProcess
from harness.upstream import EchoUpstream

pytestmark = pytest.mark.envoy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
EXAMPLE_CONFIG = ROOT / "config"
FAILURE_COUNTERS = (
    "cluster.upstream.ratelimit.error",
    "cluster.upstream.ratelimit.failure_mode_allowed",
    "http.ingress.ext_authz.error",
    "http.ingress.ext_authz.failure_mode_allowed",
    "http.ingress.ext_authz.invalid",
)


@pytest.fixture(autouse=True)
def _envoy_saw_no_failures(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the stack, Envoy has counted no RLS/authz failure."""
    yield
    if "edge" not in request.fixturenames:
        return
    edge: Edge = request.getfixturevalue("edge")
    stats = edge.envoy.stats()
    failures = {name: stats.get(name, 0) for name in FAILURE_COUNTERS}
    assert not any(failures.values()), f"{failures}\n{edge.logs()}"


def _limit_policies(response: httpx.Response) -> list[str]:
    return [p.strip() for p in response.headers["x-ratelimit-limit"].split(",")]


def _assert_draft03_headers(response: httpx.Response, limit: int) -> None:
    """``x-ratelimit-*`` name ``limit`` per minute and a reset within the window."""
    policies = _limit_policies(response)
    assert policies[0] == str(limit), show(response)
    assert f"{limit};w=60" in policies, show(response)
    assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 60, show(response)


def test_missing_key_is_401_with_json_body_and_challenge(edge: Edge) -> None:
    """No API key: 401 with a JSON body and www-authenticate; upstream untouched."""
    response = edge.get("/")

    assert response.status_code == 401, show(response)
    assert "www-authenticate" in response.headers, show(response)
    assert "json" in response.headers.get("content-type", ""), show(response)
    assert isinstance(response.json(), dict), show(response)
    assert not edge.reached_upstream(response)


def test_unknown_key_is_401(edge: Edge) -> None:
    """A key that is in no api_keys file is refused like a missing one."""
    response = edge.get("/", headers={"x-api-key": "not-a-key-anyone-has"})

    assert response.status_code == 401, show(response)
    assert "www-authenticate" in response.headers, show(response)
    assert not edge.reached_upstream(response)


def test_valid_key_reaches_upstream_with_identity_headers(edge: Edge) -> None:
    """The upstream sees the caller's identity and tier, exactly once each."""
    caller = edge.callers["reader"]

    response = edge.get("/hello", caller)

    assert response.status_code == 200, show(response)
    seen = response.json()["headers"]
    assert seen["x-user-id"] == [caller.identity]
    assert seen["x-user-tier"] == [caller.tier]


def test_client_cannot_spoof_identity_headers(edge: Edge) -> None:
    """Client-sent x-user-id / x-user-tier are overwritten, not appended."""
    caller = edge.callers["spoofer"]
    spoofed = {"x-user-id": "mallory", "x-user-tier": "pro"}

    response = edge.get("/", caller, headers=spoofed)

    assert response.status_code == 200, show(response)
    seen = response.json()["headers"]
    assert seen["x-user-id"] == [caller.identity]
    assert seen["x-user-tier"] == ["free"]


def test_bearer_token_is_accepted(edge: Edge) -> None:
    """``authorization: Bearer <key>`` works as well as x-api-key."""
    caller = edge.callers["bearer"]

    response = edge.get("/", headers={"authorization": f"Bearer {caller.key}"})

    assert response.status_code == 200, show(response)
    assert response.json()["headers"]["x-user-id"] == [caller.identity]


def test_request_over_the_minute_limit_is_429(edge: Edge) -> None:
    """Free tier: 3 answers count down to 0, the 4th is 429 and never forwarded."""
    caller = edge.callers["limited"]
    wait_for_window_room()

    answers = [edge.get("/", caller) for _ in range(FREE_PER_MINUTE + 1)]

    codes = [a.status_code for a in answers]
    assert codes == [200, 200, 200, 429], "\n".join(map(show, answers))
    remaining = [a.headers.get("x-ratelimit-remaining") for a in answers]
    assert remaining == ["2", "1", "0", "0"], "\n".join(map(show, answers))
    for answer in answers:
        _assert_draft03_headers(answer, FREE_PER_MINUTE)
    refused = answers[-1]
    assert refused.headers.get("x-envoy-ratelimited") == "true", show(refused)
    assert not edge.reached_upstream(refused)


def test_two_keys_count_separately(edge: Edge) -> None:
    """Alice using up her minute leaves Bob's budget whole."""
    alice, bob = edge.callers["alice"], edge.callers["bob"]
    wait_for_window_room()

    alices = [edge.get("/", alice) for _ in range(FREE_PER_MINUTE + 1)]
    bobs = edge.get("/", bob)

    assert [a.status_code for a in alices][-1] == 429, "\n".join(map(show, alices))
    assert bobs.status_code == 200, show(bobs)
    assert bobs.headers["x-ratelimit-remaining"] == str(FREE_PER_MINUTE - 1)


def test_pro_tier_gets_its_larger_limit(edge: Edge) -> None:
    """Pro: 6 per minute, then 429."""
    caller = edge.callers["pro"]
    wait_for_window_room()

    answers = [edge.get("/", caller) for _ in range(PRO_PER_MINUTE + 1)]

    codes = [a.status_code for a in answers]
    assert codes == [200] * PRO_PER_MINUTE + [429], "\n".join(map(show, answers))
    for answer in answers:
        _assert_draft03_headers(answer, PRO_PER_MINUTE)
    assert answers[-1].headers["x-ratelimit-remaining"] == "0"


def test_shadow_rule_reports_but_never_blocks(edge: Edge) -> None:
    """The shadowed bucket (1/minute) is counted and reported, never enforced."""
    caller = edge.callers["shadow"]
    bucket = {BUCKET_HEADER: "shadowed"}
    wait_for_window_room()

    answers = [edge.get(BUCKET_PREFIX + "s", caller, bucket) for _ in range(4)]

    assert all(a.status_code == 200 for a in answers), "\n".join(map(show, answers))
    for answer in answers:
        assert "1;w=60" in _limit_policies(answer), show(answer)
    assert answers[-1].headers["x-ratelimit-remaining"] == "0", show(answers[-1])


def test_unlimited_rule_never_blocks(edge: Edge) -> None:
    """The free-for-all bucket lets through far more than any limit."""
    caller = edge.callers["unlimited"]
    bucket = {BUCKET_HEADER: "free-for-all"}

    answers = [edge.get(BUCKET_PREFIX + "u", caller, bucket) for _ in range(12)]

    assert all(a.status_code == 200 for a in answers), "\n".join(map(show, answers))


def test_limit_enforced_in_check_answers_429_with_retry_after(edge: Edge) -> None:
    """With context_extensions ratelimit_domain, Check itself answers 429."""
    caller = edge.callers["checked"]
    path = AUTHZ_LIMITED_PREFIX + "x"
    wait_for_window_room()

    answers = [edge.get(path, caller) for _ in range(FREE_PER_MINUTE + 1)]

    codes = [a.status_code for a in answers]
    assert codes == [200, 200, 200, 429], "\n".join(map(show, answers))
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 60, show(refused)
    assert refused.headers["ratelimit-limit"].startswith("3"), show(refused)
    assert refused.headers["ratelimit-remaining"] == "0", show(refused)
    assert 1 <= int(refused.headers["ratelimit-reset"]) <= 60, show(refused)
    assert not edge.reached_upstream(refused)


def test_envoy_counts_decisions_and_no_failures(edge: Edge) -> None:
    """Envoy saw OK and over-limit answers, and no error or fail-open."""
    edge.get("/", edge.callers["reader"])

    stats = edge.envoy.stats()

    assert stats.get("cluster.upstream.ratelimit.ok", 0) > 0, stats
    assert stats.get("cluster.upstream.ratelimit.over_limit", 0) > 0, stats
    assert stats.get("http.ingress.ext_authz.ok", 0) > 0, stats
    assert stats.get("http.ingress.ext_authz.denied", 0) > 0, stats
    for name in FAILURE_COUNTERS:
        assert stats.get(name, 0) == 0, (name, stats.get(name))


def _endpoint(cluster: dict[str, Any]) -> dict[str, Any]:
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address: dict[str, Any] = endpoints[0]["endpoint"]["address"]["socket_address"]

    return address


def _deploy_config_on_test_ports(server: int, upstream: int) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with its fixed ports swapped for free ones."""
    config: dict[str, Any] = yaml.safe_load(DEPLOY_CONFIG.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    resources = config["static_resources"]
    resources["listeners"][0]["address"]["socket_address"]["port_value"] = 0
    ports = {"ratelimit_ext": server, "upstream": upstream}
    for cluster in resources["clusters"]:
        _endpoint(cluster)["port_value"] = ports[cluster["name"]]

    return config


def test_deploy_example_config_is_valid() -> None:
    """deploy/envoy/envoy.yaml passes ``envoy --mode validate``, wired as documented."""
    checked = validate_config(DEPLOY_CONFIG)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = DEPLOY_CONFIG.read_text()
    config = yaml.safe_load(text)
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 10000
    ports = {
        c["name"]: _endpoint(c)["port_value"]
        for c in config["static_resources"]["clusters"]
    }
    assert ports == {"ratelimit_ext": 8081, "upstream": 8000}
    assert "enable_x_ratelimit_headers: DRAFT_VERSION_03" in text


def test_readme_demo_with_example_config(tmp_path: Path) -> None:
    """The README's demo: deploy/envoy/envoy.yaml + config/ answer 401/200/429."""
    with (
        EchoUpstream() as upstream,
        ServerProcess(EXAMPLE_CONFIG, tmp_path) as server,
        EnvoyProcess(
            _deploy_config_on_test_ports(server.port, upstream.port), tmp_path
        ) as envoy,
        httpx.Client(base_url=envoy.http_url, trust_env=False, timeout=10) as client,
    ):
        denied = client.get("/")
        pro = client.get("/", headers={"x-api-key": "demo-pro-key"})
        free = [
            client.get("/", headers={"x-api-key": "demo-free-key"}).status_code
            for _ in range(8)
        ]
        stats = envoy.stats()

    assert denied.status_code == 401, show(denied)
    assert pro.status_code == 200, show(pro)
    assert pro.json()["headers"]["x-user-tier"] == ["pro"]
    assert "x-ratelimit-remaining" in pro.headers, show(pro)
    # Free tier: a token bucket with a burst of 5 (config/policy.yaml).
    assert free == [200] * 5 + [429] * 3
    for name in FAILURE_COUNTERS:
        assert stats.get(name, 0) == 0, (name, stats)
