"""The Grafana dashboard and the alert rules: well formed, and every metric
they query is one a real server exports."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import grpc
import helm_python
import pytest
import yaml

from deploy.support import CHART_DIR, KUBE_VERSION, NAMESPACE, render
from e2e.stack import wait_for_window_room
from harness.ports import LOOPBACK, free_port
from observability.support import API_KEY, CHECK_DOMAIN, IDENTITY, StartObs
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2
from ratelimit_ext.admin.api import SERVICE_NAME
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.counting import CountingSettings
from ratelimit_ext.policy.model import FailurePolicy
from ratelimit_ext.store.guard import GuardSettings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "observability" / "grafana-dashboard.json"
RULES = ROOT / "deploy" / "observability" / "prometheus-rules.yaml"
METRIC = re.compile(r"\bratelimit_ext_[a-z_]+\b")
SEVERITIES = {"info", "warning", "critical"}

GRANT = f"""
bypass_grants:
  - id: g-obs-1
    subject: {{identity: {IDENTITY}}}
    mode: partial
    factor: 2
    reason: observability test
    actor: tester
    expires_at: 2099-01-01T00:00:00Z
"""


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def rules_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def queries() -> list[str]:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    variables = dashboard()["templating"]["list"]
    exprs += [v["definition"] for v in variables if "definition" in v]
    exprs += [r["expr"] for g in rules_file()["spec"]["groups"] for r in g["rules"]]
    return exprs


def balanced(expr: str) -> bool:
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


# --- structure -----------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    panels = board["panels"]

    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_dashboard_covers_what_operators_ask_for() -> None:
    text = json.dumps(dashboard())

    for metric in (
        "ratelimit_ext_decisions_total",
        "ratelimit_ext_store_duration_seconds_bucket",
        "ratelimit_ext_store_errors_total",
        "ratelimit_ext_failure_policy_decisions_total",
        "ratelimit_ext_overlimit_cache_hits_total",
        "ratelimit_ext_policy_reloads_total",
        "ratelimit_ext_bypass_uses_total",
        "ratelimit_ext_authz_checks_total",
    ):
        assert metric in text
    assert "histogram_quantile(0.99" in text and "histogram_quantile(0.5" in text
    assert 'code=\\"OVER_LIMIT\\"' in text


def test_rules_are_a_prometheus_rule() -> None:
    rules = rules_file()
    alerts = [r for g in rules["spec"]["groups"] for r in g["rules"]]

    assert rules["apiVersion"] == "monitoring.coreos.com/v1"
    assert rules["kind"] == "PrometheusRule"
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)) == 5
    for alert in alerts:
        assert alert["labels"]["severity"] in SEVERITIES
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert re.fullmatch(r"([0-9]+[smh])?", alert.get("for", ""))
    exprs = " ".join(a["expr"] for a in alerts)
    for metric in (
        "ratelimit_ext_store_errors_total",
        "ratelimit_ext_failure_policy_decisions_total",
        'ratelimit_ext_policy_reloads_total{outcome="failed"}',
        'ratelimit_ext_decisions_total{code="OVER_LIMIT"}',
        "absent(ratelimit_ext_decisions_total)",
    ):
        assert metric in exprs


@pytest.mark.parametrize("expr", queries())
def test_every_query_is_balanced(expr: str) -> None:
    assert balanced(expr), expr
    assert METRIC.search(expr), expr


# --- the Helm chart's copy -----------------------------------------------------------


RULE_VALUES = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"r": "p"}}}}


def test_chart_renders_the_same_rules_when_asked() -> None:
    (rule,) = [o for o in render(RULE_VALUES) if o["kind"] == "PrometheusRule"]

    assert rule["spec"] == rules_file()["spec"]
    assert rule["metadata"]["labels"]["r"] == "p"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert not [o for o in render() if o["kind"] == "PrometheusRule"]


def test_chart_with_rules_passes_helm_lint() -> None:
    report = helm_python.lint(
        CHART_DIR,
        RULE_VALUES,
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_schema_refuses_unknown_rule_settings() -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "interval": "1m"}}}
    with pytest.raises(helm_python.HelmValuesError):
        render(values)


# --- every metric exists -------------------------------------------------------------


async def test_every_queried_metric_is_exported(
    start_obs: StartObs, tmp_path: Path
) -> None:
    """Traffic that exercises every metric, on two servers; then the scrapes."""
    wait_for_window_room(needed=10.0)
    token = tmp_path / "token"
    token.write_text("t0k3n-obs")
    admin_port = free_port()
    busy = await start_obs(
        watch=True,
        admin=AdminSettings(
            listen=f"{LOOPBACK}:{admin_port}",
            token_file=token,
            audit_log=tmp_path / "audit.jsonl",
        ),
    )
    config = busy.sidecar.settings.config
    (config / "grants.yaml").write_text(GRANT)
    assert busy.sidecar.reloader is not None
    await busy.sidecar.reloader.check()
    for _ in range(6):
        await busy.limit(("generic_key", "bkt-named"))
    for _ in range(2):
        await busy.limit(("generic_key", "bkt-shadowed"))
    await busy.check(API_KEY, enforce=CHECK_DOMAIN)
    await busy.check(None)
    with pytest.raises(grpc.aio.AioRpcError):
        await busy.limit(("generic_key", "x"), domain="")
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{admin_port}") as channel:
        info = channel.unary_unary(
            f"/{SERVICE_NAME}/GetServerInfo",
            request_serializer=admin_pb2.GetServerInfoRequest.SerializeToString,
            response_deserializer=admin_pb2.GetServerInfoResponse.FromString,
        )
        await info(
            admin_pb2.GetServerInfoRequest(),
            metadata=(("authorization", "Bearer t0k3n-obs"),),
        )
    failing = await start_obs(
        store=f"redis://{LOOPBACK}:{free_port()}",
        counting=CountingSettings(failure_policy=FailurePolicy.ALLOW),
        guard=GuardSettings(timeout_seconds=2.0),
    )
    await failing.limit(("generic_key", "bkt-named"))

    exported = {s.name for s in await asyncio.to_thread(busy.samples)}
    exported |= {s.name for s in await asyncio.to_thread(failing.samples)}

    used = {name for expr in queries() for name in METRIC.findall(expr)}
    assert used - exported == set()
    assert "ratelimit_ext_bypass_uses_total" in exported
