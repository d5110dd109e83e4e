"""The Helm chart, rendered and linted by Helm's own library, checked against
the Kubernetes schemas, and read back the way the server will read it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import helm_python
import pytest
from redis.connection import parse_url

from deploy.support import (
    CHART_DIR,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    by_kind,
    env_of,
    one,
    render,
    render_text,
    schema_problem,
)
from ratelimit_ext.cli import build_parser
from ratelimit_ext.policy.loader import load_policy

# Characters that mean something in a URL, plus a space.
STORE_PASSWORD = "s3cr@t:/pa ss%+?#"
API_KEY = {
    "sha256": "9f8cfdb17116bf0e2a44e071454f25594cb9b8737bf331e6a2f0b30550572f29",
    "identity": "demo-free",
    "tier": "free",
    "attributes": {"plan": "free"},
}
CLUSTER_NODES = ["redis-0.redis:6379", "redis-1.redis:6379", "redis-2.redis:6380"]

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "redis-tls-existing-secret": {
        "store": {
            "mode": "redis",
            "redis": {"host": "redis-master.data.svc.cluster.local", "db": 2},
            "existingSecret": "redis-auth",
            "existingSecretPasswordKey": "redis-password",
            "tls": {"enabled": True, "caSecret": "redis-ca"},
            "options": {"health_check_interval": 30},
        },
        "server": {"failurePolicy": "local"},
    },
    "cluster-chart-password": {
        "store": {
            "mode": "cluster",
            "cluster": {"nodes": CLUSTER_NODES},
            "username": "ratelimit",
            "password": STORE_PASSWORD,
        },
    },
    "hpa-pdb": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 3,
            "maxReplicas": 12,
            "targetMemoryUtilizationPercentage": 80,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    },
    "control-plane": {
        "store": {"mode": "redis", "redis": {"host": "redis"}, "password": "pw"},
        "admin": {"enabled": True},
        "controlPlane": {
            "enabled": True,
            "publishTo": ["ratelimit-ext-0.ratelimit-ext:8082"],
            "args": ["--sync-interval", "10"],
            "persistence": {"enabled": True, "size": "2Gi"},
        },
    },
    "admin-tls": {
        "admin": {
            "enabled": True,
            "existingSecret": "admin-token",
            "existingSecretKey": "bearer",
            "tls": {"secretName": "admin-cert", "clientCASecret": "admin-ca"},
        },
        "store": {"mode": "redis", "redis": {"host": "redis"}},
        "server": {"workers": 2},
    },
    "monitoring-network-admin-keys": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "networkPolicy": {
            "enabled": True,
            "grpcFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "istio-system"}
                    },
                    "podSelector": {"matchLabels": {"istio": "ingressgateway"}},
                }
            ],
            "metricsFrom": [{"namespaceSelector": {}}],
            "egress": {"enabled": True},
        },
        "admin": {"enabled": True},
        "apiKeys": {"keys": [API_KEY]},
        "store": {"mode": "redis", "redis": {"host": "redis"}},
    },
}

EXPECTED_KINDS = {
    "defaults": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    },
    "redis-tls-existing-secret": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    },
    "cluster-chart-password": {
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    },
    "hpa-pdb": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    },
    "control-plane": {
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    },
    "admin-tls": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    },
    "monitoring-network-admin-keys": {
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "NetworkPolicy",
    },
}

scenario = pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())


def server_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        obj
        for obj in by_kind(objects, "Deployment")
        if obj["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    ]
    return deployment


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = server_deployment(objects)["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return dict(container)


# --- Helm itself ---------------------------------------------------------------


@scenario
def test_helm_lint_finds_nothing(values: dict[str, Any]) -> None:
    """`helm lint --strict` reports no error and no warning."""
    report = helm_python.lint(
        CHART_DIR,
        values,
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )

    assert report["errors"] == []
    # Severity 1 is information ("icon is recommended"); 2 and up would fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@scenario
def test_every_rendered_object_matches_the_kubernetes_schema(
    values: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """Each object validates against Kubernetes' OpenAPI schema (strict)."""
    objects = render(values)

    problems = [
        p
        for obj in objects
        if obj["kind"] != "ServiceMonitor"
        if (p := schema_problem(obj))
    ]

    assert problems == []
    assert {obj["kind"] for obj in objects} == EXPECTED_KINDS[request.node.callspec.id]
    assert all(obj["metadata"]["namespace"] == NAMESPACE for obj in objects)


def test_service_monitor_has_the_prometheus_operator_shape() -> None:
    """No bundled schema for the CRD: check the fields Prometheus Operator reads."""
    objects = render(SCENARIOS["monitoring-network-admin-keys"])
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    assert "metrics" in {port["name"] for port in service["spec"]["ports"]}


# --- the defaults --------------------------------------------------------------


def test_server_runs_locked_down() -> None:
    """Non-root numeric UID, read-only root, no capabilities, no API token."""
    objects = render()
    pod = server_deployment(objects)["spec"]["template"]["spec"]
    container = server_container(objects)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert next(v for v in pod["volumes"] if v["name"] == tmp["name"])["emptyDir"]


def test_server_listens_on_all_interfaces_and_probes_grpc_health() -> None:
    """Container addresses from env; every probe is a gRPC probe on port grpc."""
    container = server_container(render())
    env = env_of(container)

    assert env["RATELIMIT_EXT_LISTEN"] == "0.0.0.0:8081"
    assert env["RATELIMIT_EXT_METRICS_LISTEN"] == "0.0.0.0:9090"
    assert env["RATELIMIT_EXT_STORE"] == "memory"
    assert env["RATELIMIT_EXT_FAILURE_POLICY"] == "unavailable"
    assert container["args"] == ["serve"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 8081,
        "metrics": 9090,
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 8081}, probe
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}


def test_service_has_named_grpc_ports() -> None:
    """grpc (and admin when on) are appProtocol grpc, so Istio speaks HTTP/2."""
    default = one(render(), "Service")["spec"]["ports"]
    with_admin = one(render({"admin": {"enabled": True}}), "Service")["spec"]["ports"]

    assert [(p["name"], p["port"], p["appProtocol"]) for p in default] == [
        ("grpc", 8081, "grpc"),
        ("metrics", 9090, "http"),
    ]
    assert [(p["name"], p["port"], p["appProtocol"]) for p in with_admin] == [
        ("grpc", 8081, "grpc"),
        ("admin", 8082, "grpc"),
        ("metrics", 9090, "http"),
    ]


def test_pods_spread_over_zones_and_nodes() -> None:
    objects = render()
    spec = server_deployment(objects)["spec"]
    constraints = spec["template"]["spec"]["topologySpreadConstraints"]

    assert [c["topologyKey"] for c in constraints] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    for constraint in constraints:
        assert (
            constraint["labelSelector"]["matchLabels"]
            == spec["selector"]["matchLabels"]
        )
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": spec["selector"]}


# --- the policy directory ------------------------------------------------------


def test_policy_and_api_keys_are_one_watched_directory() -> None:
    """A projected volume joins the ConfigMap and the Secret at --config."""
    objects = render({"apiKeys": {"keys": [API_KEY]}})
    container = server_container(objects)
    pod = server_deployment(objects)["spec"]["template"]["spec"]

    config_dir = env_of(container)["RATELIMIT_EXT_CONFIG"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_dir]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a subPath mount would never be updated
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"]
    assert (
        sources[0]["configMap"]["name"] == one(objects, "ConfigMap")["metadata"]["name"]
    )
    secrets = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    assert sources[1]["secret"]["name"] in secrets


def test_policy_edit_does_not_roll_the_pods() -> None:
    """A new policy changes the ConfigMap only: no checksum in the pod template."""
    other_policy = {
        "policy": {"files": {"other.yaml": "domain: other\ndescriptors: []\n"}}
    }
    before, after = render(), render(other_policy)

    template = server_deployment(before)["spec"]["template"]
    assert template == server_deployment(after)["spec"]["template"]
    assert one(before, "ConfigMap")["data"] != one(after, "ConfigMap")["data"]
    assert "checksum" not in str(template.get("metadata", {}).get("annotations", {}))


def test_rendered_policy_and_keys_load_in_the_server(tmp_path: Path) -> None:
    """The files as the kubelet would write them pass the server's own loader."""
    objects = render(SCENARIOS["monitoring-network-admin-keys"])
    files = dict(one(objects, "ConfigMap")["data"])
    files.update(
        one(
            [
                s
                for s in by_kind(objects, "Secret")
                if "api-keys" in s["metadata"]["name"]
            ],
            "Secret",
        )["stringData"]
    )
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    policy = load_policy(tmp_path)

    assert [domain.name for domain in policy.domains] == ["api"]
    assert len(policy.api_keys) == 1


# --- store ---------------------------------------------------------------------


def test_cluster_url_carries_the_chart_made_password() -> None:
    """$(REDIS_PASSWORD), expanded by the kubelet, parses back to the password."""
    from ratelimit_ext.store.cluster import parse_cluster_url

    objects = render(SCENARIOS["cluster-chart-password"])
    container = server_container(objects)
    names = [item["name"] for item in container["env"]]
    env = env_of(container)
    secret = one(objects, "Secret")

    assert names.index("REDIS_PASSWORD") < names.index("RATELIMIT_EXT_STORE")
    reference = env["REDIS_PASSWORD"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert secret["stringData"]["password"] == STORE_PASSWORD
    url = env["RATELIMIT_EXT_STORE"]
    assert (
        url == f"redis+cluster://ratelimit:$(REDIS_PASSWORD)@{','.join(CLUSTER_NODES)}"
    )
    assert STORE_PASSWORD not in str(server_deployment(objects))

    expanded = url.replace("$(REDIS_PASSWORD)", secret["stringData"][reference["key"]])
    address = parse_cluster_url(expanded)
    assert address.options["password"] == STORE_PASSWORD
    assert address.options["username"] == "ratelimit"
    assert address.seeds == (
        ("redis-0.redis", 6379),
        ("redis-1.redis", 6379),
        ("redis-2.redis", 6380),
    )


def test_redis_url_with_tls_and_an_existing_secret() -> None:
    """rediss://, database, options and the mounted CA file reach redis-py."""
    objects = render(SCENARIOS["redis-tls-existing-secret"])
    container = server_container(objects)
    env = env_of(container)

    assert env["REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "redis-auth", "key": "redis-password"}
    }
    assert env["RATELIMIT_EXT_FAILURE_POLICY"] == "local"
    assert env["RATELIMIT_EXT_REPLICAS"] == "2"
    url = env["RATELIMIT_EXT_STORE"]
    assert urlsplit(url).scheme == "rediss"
    options = parse_url(url.replace("$(REDIS_PASSWORD)", "pw"))
    assert options["host"] == "redis-master.data.svc.cluster.local"
    assert (options["port"], options["db"], options["password"]) == (6379, 2, "pw")
    assert options["health_check_interval"] == 30
    ca_file = parse_qs(urlsplit(url).query)["ssl_ca_certs"][0]
    (mount,) = [
        m for m in container["volumeMounts"] if ca_file.startswith(m["mountPath"])
    ]
    pod = server_deployment(objects)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "redis-ca"
    assert by_kind(objects, "Secret") == []


# --- optional parts -------------------------------------------------------------


def test_hpa_owns_the_replica_count() -> None:
    objects = render(SCENARIOS["hpa-pdb"])
    deployment = server_deployment(objects)
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]

    assert "replicas" not in deployment["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu", "memory"]
    assert env_of(server_container(objects))["RATELIMIT_EXT_REPLICAS"] == "3"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


def control_plane(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (control,) = [
        d
        for d in by_kind(objects, "Deployment")
        if d["metadata"]["name"].endswith("-control-plane")
    ]
    return control


def volume_of(deployment: dict[str, Any], mount: dict[str, Any]) -> dict[str, Any]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    return dict(volume)


def test_control_plane_is_a_separate_deployment() -> None:
    """`ratelimit-ext control-plane` on a PVC, never behind the servers' Service."""
    objects = render(SCENARIOS["control-plane"])
    control = control_plane(objects)
    (container,) = control["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}

    assert container["command"] == ["ratelimit-ext"]
    assert container["args"] == [
        "control-plane",
        "--audit-log=/var/lib/ratelimit-ext/config/.audit.jsonl",
        "--publish-to=ratelimit-ext-0.ratelimit-ext:8082",
        "--sync-interval",
        "10",
    ]
    assert control["spec"]["replicas"] == 1
    assert control["spec"]["strategy"] == {"type": "Recreate"}
    pod_labels = control["spec"]["template"]["metadata"]["labels"]
    assert not services[RELEASE]["spec"]["selector"].items() <= pod_labels.items()
    own_service = services[f"{RELEASE}-control-plane"]
    assert own_service["spec"]["selector"].items() <= pod_labels.items()

    config_dir = env["RATELIMIT_EXT_CONTROL_PLANE_CONFIG_DIR"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    claim = volume_of(control, mounts[config_dir])["persistentVolumeClaim"]["claimName"]
    assert one(objects, "PersistentVolumeClaim")["metadata"]["name"] == claim
    assert volume_of(control, mounts[f"{config_dir}/chart"])["projected"]
    assert mounts[f"{config_dir}/chart"]["readOnly"] is True
    assert "control-plane" not in str(render())


def test_admin_writes_into_a_writable_config_directory() -> None:
    """With the admin API the policy sits read-only under chart/ of an emptyDir."""
    objects = render(SCENARIOS["admin-tls"])
    deployment = server_deployment(objects)
    container = server_container(objects)
    env = env_of(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    config_dir = env["RATELIMIT_EXT_CONFIG"]
    assert "emptyDir" in volume_of(deployment, mounts[config_dir])
    assert "readOnly" not in mounts[config_dir]
    assert volume_of(deployment, mounts[f"{config_dir}/chart"])["projected"]
    assert env["RATELIMIT_EXT_AUDIT_LOG"].startswith(f"{config_dir}/.")
    assert env["RATELIMIT_EXT_ADMIN_LISTEN"] == "0.0.0.0:8082"
    token_dir, _, token_file = env["RATELIMIT_EXT_ADMIN_TOKEN_FILE"].rpartition("/")
    token = volume_of(deployment, mounts[token_dir])["secret"]
    assert token["secretName"] == "admin-token"
    assert token["items"] == [{"key": "bearer", "path": token_file}]
    tls_dir = env["RATELIMIT_EXT_ADMIN_TLS_CERT"].rpartition("/")[0]
    assert (
        volume_of(deployment, mounts[tls_dir])["secret"]["secretName"] == "admin-cert"
    )
    ca_dir = env["RATELIMIT_EXT_ADMIN_TLS_CLIENT_CA"].rpartition("/")[0]
    assert volume_of(deployment, mounts[ca_dir])["secret"]["secretName"] == "admin-ca"
    assert {p["name"] for p in container["ports"]} == {"grpc", "admin", "metrics"}


def test_admin_off_means_no_admin_listener() -> None:
    env = env_of(server_container(render()))

    assert env["RATELIMIT_EXT_ADMIN_LISTEN"] == "none"
    assert env["RATELIMIT_EXT_CONFIG"] == "/etc/ratelimit-ext/config"


def test_chart_made_admin_token_is_random_and_long() -> None:
    secret = one(render({"admin": {"enabled": True}}), "Secret")

    assert secret["metadata"]["name"] == f"{RELEASE}-admin"
    assert len(base64.b64decode(secret["data"]["token"])) >= 40


def parsed_value(actual: Any, text: str) -> Any:
    """``text`` read as the type argparse gave ``actual``."""
    if isinstance(actual, bool):
        return text.lower() in {"1", "true", "yes", "on"}
    if isinstance(actual, int | float):
        return type(actual)(text)
    return text


@pytest.mark.parametrize("name", ["admin-tls", "redis-tls-existing-secret"])
def test_every_server_variable_is_one_the_cli_reads(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RATELIMIT_EXT_<FLAG> set by the chart lands in `serve`'s --<flag>."""
    env = env_of(server_container(render(SCENARIOS[name])))
    ours = {k: v for k, v in env.items() if k.startswith("RATELIMIT_EXT_")}
    for key, value in ours.items():
        monkeypatch.setenv(key, value)

    args = build_parser().parse_args(["serve"])

    for key, value in ours.items():
        actual = getattr(args, key.removeprefix("RATELIMIT_EXT_").lower())
        assert actual == parsed_value(actual, value), key


def test_control_plane_variables_are_ones_the_cli_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control = control_plane(render(SCENARIOS["control-plane"]))
    (container,) = control["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    args = build_parser().parse_args(container["args"])

    assert args.command == "control-plane"
    assert args.config_dir == env["RATELIMIT_EXT_CONTROL_PLANE_CONFIG_DIR"]
    assert args.listen == env["RATELIMIT_EXT_CONTROL_PLANE_LISTEN"]
    assert args.token_file == env["RATELIMIT_EXT_CONTROL_PLANE_TOKEN_FILE"]
    assert args.publish_token_file == env["RATELIMIT_EXT_ADMIN_TOKEN_FILE"]
    assert args.publish_to == ["ratelimit-ext-0.ratelimit-ext:8082"]
    assert args.audit_log == "/var/lib/ratelimit-ext/config/.audit.jsonl"


def test_network_policy_opens_only_the_served_ports() -> None:
    objects = render(SCENARIOS["monitoring-network-admin-keys"])
    policy = one(objects, "NetworkPolicy")["spec"]

    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ports = [rule["ports"][0]["port"] for rule in policy["ingress"]]
    assert ports == ["grpc", "admin", "metrics"]
    assert policy["ingress"][0]["from"][0]["podSelector"] == {
        "matchLabels": {"istio": "ingressgateway"}
    }
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 6379}


def test_notes_name_the_istio_cluster() -> None:
    notes = render_text()["ratelimit-ext/templates/NOTES.txt"]

    assert f"outbound|8081||{RELEASE}.{NAMESPACE}.svc.cluster.local" in notes
    assert "store.mode=memory" in notes


# --- values that must be refused ------------------------------------------------

REJECTED = [
    pytest.param(
        {"replicaCount": 0},
        "at '/replicaCount': minimum: got 0, want 1",
        id="replicas-zero",
    ),
    pytest.param(
        {"replicaCount": "3"},
        "at '/replicaCount': got string, want integer",
        id="replicas-string",
    ),
    pytest.param(
        {"replicaCount": 1.5},
        "at '/replicaCount': got number, want integer",
        id="replicas-fraction",
    ),
    pytest.param(
        {"store": {"mode": "etcd"}},
        "at '/store/mode': value must be one of 'memory', 'redis', 'cluster'",
        id="store-mode",
    ),
    pytest.param(
        {"server": {"failurePolicy": "open"}},
        "at '/server/failurePolicy': value must be one of 'unavailable', "
        "'allow', 'deny', 'local'",
        id="failure-policy",
    ),
    pytest.param(
        {"store": {"mode": "redis"}},
        "at '/store/redis/host': minLength: got 0, want 1",
        id="redis-no-host",
    ),
    pytest.param(
        {"store": {"mode": "cluster"}},
        "at '/store/cluster/nodes': minItems: got 0, want 1",
        id="cluster-no-nodes",
    ),
    pytest.param(
        {"store": {"mode": "cluster", "cluster": {"nodes": ["redis"]}}},
        "at '/store/cluster/nodes/0': 'redis' does not match pattern",
        id="cluster-node-without-port",
    ),
    pytest.param(
        {"ports": {"grpc": 70000}},
        "at '/ports/grpc': maximum: got 70,000, want 65,535",
        id="port-range",
    ),
    pytest.param(
        {"replicaCounts": 2},
        "at '': additional properties 'replicaCounts' not allowed",
        id="typo",
    ),
    pytest.param(
        {"apiKeys": {"keys": [{"sha256": "abc", "identity": "x"}]}},
        "at '/apiKeys/keys/0/sha256': 'abc' does not match pattern",
        id="api-key-digest",
    ),
    pytest.param(
        {"policy": {"files": {"policy.json": "{}"}}},
        "at '/policy/files': additional properties 'policy.json' not allowed",
        id="policy-file-name",
    ),
    pytest.param(
        {"server": {"storeTimeout": 0}},
        "at '/server/storeTimeout': exclusiveMinimum: got 0, want 0",
        id="store-timeout",
    ),
]


@pytest.mark.parametrize(("values", "message"), REJECTED)
def test_values_schema_rejects(values: dict[str, Any], message: str) -> None:
    """values.schema.json refuses the values, naming the path and the rule."""
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(values)

    assert "values don't meet the specifications of the schema" in str(caught.value)
    assert message in str(caught.value)


TEMPLATE_FAILURES = [
    pytest.param(
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (2)",
        id="hpa-min-over-max",
    ),
    pytest.param(
        {
            "store": {
                "mode": "redis",
                "redis": {"host": "r"},
                "password": "a",
                "existingSecret": "b",
            }
        },
        "store.password and store.existingSecret are both set",
        id="two-passwords",
    ),
    pytest.param(
        {
            "apiKeys": {"keys": [API_KEY]},
            "policy": {"files": {"api_keys.yaml": "api_keys: []\n"}},
        },
        "policy.files.api_keys.yaml and the API key Secret would be the same file",
        id="file-clash",
    ),
    pytest.param(
        {"podDisruptionBudget": {"maxUnavailable": None}},
        "podDisruptionBudget.enabled needs minAvailable or maxUnavailable",
        id="pdb-empty",
    ),
    pytest.param(
        {"server": {"workers": 2}},
        "server.workers above 1 needs a shared store",
        id="workers-memory",
    ),
    pytest.param(
        {"controlPlane": {"enabled": True, "publishTo": ["a:8082"]}},
        "controlPlane.publishTo pushes to the servers' admin API: set admin.enabled",
        id="publish-without-admin",
    ),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_FAILURES)
def test_inconsistent_values_fail_with_a_message(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(values)

    assert message in str(caught.value)
