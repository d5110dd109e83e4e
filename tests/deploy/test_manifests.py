"""Plain Kubernetes manifests (deploy/k8s) and the Istio examples (deploy/istio).

kubernetes-validate has no schemas for Istio's custom resources, so those are
checked for their structure and their agreement with the Service, the
policy and each other; the Envoy configuration they patch in is checked by
the real Envoy binary (``envoy --mode validate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.support import (
    ISTIO_DIR,
    K8S_DIR,
    PLAIN_MANIFEST,
    by_kind,
    healthcheck_command,
    load_documents,
    one,
    plain_manifest_text,
    render,
    schema_problem,
    without_helm_labels,
)
from harness.envoy import validate_config
from ratelimit_ext.policy.loader import load_policy

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RATELIMIT = "envoy.filters.http.ratelimit"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
TYPE = "type.googleapis.com/"
KUBE_FILES = sorted(
    path.name for path in K8S_DIR.glob("*.yaml") if path.name != "kustomization.yaml"
)


def deployed_policy_domain(tmp_path: Path) -> Any:
    """The one domain of deploy/k8s's policy ConfigMap, loaded by the server."""
    for name, text in one(load_documents(PLAIN_MANIFEST), "ConfigMap")["data"].items():
        (tmp_path / name).write_text(text)
    (domain,) = load_policy(tmp_path).domains
    return domain


def envoy_filter_patches() -> dict[str, dict[str, Any]]:
    envoy_filter = one(
        load_documents(ISTIO_DIR / "ratelimit-envoyfilter.yaml"), "EnvoyFilter"
    )
    return {patch["applyTo"]: patch for patch in envoy_filter["spec"]["configPatches"]}


def ext_authz_provider() -> dict[str, Any]:
    operator = one(
        load_documents(ISTIO_DIR / "istio-operator-extauthz.yaml"), "IstioOperator"
    )
    (provider,) = operator["spec"]["meshConfig"]["extensionProviders"]
    return dict(provider)


def rate_limit_cluster() -> str:
    value = envoy_filter_patches()["HTTP_FILTER"]["patch"]["value"]
    service = value["typed_config"]["rate_limit_service"]["grpc_service"]
    return str(service["envoy_grpc"]["cluster_name"])


# --- deploy/k8s -------------------------------------------------------------------


@pytest.mark.parametrize("name", KUBE_FILES)
def test_plain_manifests_match_the_kubernetes_schema(name: str) -> None:
    objects = load_documents(K8S_DIR / name)

    assert objects
    assert [p for obj in objects if (p := schema_problem(obj))] == []


def test_plain_manifests_are_the_chart_defaults() -> None:
    """deploy/k8s/ratelimit-ext.yaml == the chart's defaults less Helm's labels."""
    plain = load_documents(PLAIN_MANIFEST)
    rendered = [without_helm_labels(obj) for obj in render()]

    def key(obj: dict[str, Any]) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    assert sorted(plain, key=key) == sorted(rendered, key=key), (
        "regenerate with: python tests/deploy/support.py"
    )
    assert PLAIN_MANIFEST.read_text() == plain_manifest_text()


def test_kustomization_lists_the_server_manifests() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())

    assert kustomization["resources"] == ["namespace.yaml", "ratelimit-ext.yaml"]
    namespace = one(load_documents(K8S_DIR / "namespace.yaml"), "Namespace")
    for obj in load_documents(PLAIN_MANIFEST):
        assert obj["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_default_policy_loads_in_the_server(tmp_path: Path) -> None:
    domain = deployed_policy_domain(tmp_path)

    assert domain.name == "api"
    assert {tier.name for tier in domain.tiers} == {"free", "pro"}


# --- sidecar example ------------------------------------------------------------------


def sidecar_objects() -> list[dict[str, Any]]:
    return load_documents(K8S_DIR / "sidecar-example.yaml")


def test_sidecar_listens_on_loopback_and_starts_before_envoy() -> None:
    """A native sidecar (init container, restartPolicy Always) on 127.0.0.1."""
    pod = one(sidecar_objects(), "Deployment")["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    env = {item["name"]: item["value"] for item in sidecar["env"]}

    assert sidecar["restartPolicy"] == "Always"
    assert env["RATELIMIT_EXT_LISTEN"] == "127.0.0.1:8081"
    # A kubelet gRPC probe would dial the pod IP: the image's HEALTHCHECK
    # command runs inside the container instead.
    assert sidecar["startupProbe"]["exec"]["command"] == healthcheck_command()
    assert sidecar["livenessProbe"]["exec"]["command"] == healthcheck_command()
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    (envoy,) = pod["containers"]
    assert envoy["securityContext"]["readOnlyRootFilesystem"] is True


def test_sidecar_policy_loads_in_the_server(tmp_path: Path) -> None:
    configmaps = {
        c["metadata"]["name"]: c for c in by_kind(sidecar_objects(), "ConfigMap")
    }
    for name, text in configmaps["edge-ratelimit-policy"]["data"].items():
        (tmp_path / name).write_text(text)

    (domain,) = load_policy(tmp_path).domains

    assert domain.name == "api"


@pytest.mark.envoy
def test_sidecar_envoy_config_is_valid(tmp_path: Path) -> None:
    """The sidecar's Envoy configuration passes `envoy --mode validate`."""
    configmaps = {
        c["metadata"]["name"]: c for c in by_kind(sidecar_objects(), "ConfigMap")
    }
    bootstrap = yaml.safe_load(configmaps["edge-envoy"]["data"]["envoy.yaml"])
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))

    result = validate_config(path)

    assert result.returncode == 0, result.stdout + result.stderr
    clusters = bootstrap["static_resources"]["clusters"]
    (sidecar,) = [c for c in clusters if c["name"] == "ratelimit_ext"]
    endpoint = sidecar["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", 8081)


# --- Istio -------------------------------------------------------------------------


def test_istio_files_have_the_expected_resources() -> None:
    """Parsed and shaped as Istio expects (no Istio schemas to validate with)."""
    kinds = {
        (obj["apiVersion"], obj["kind"])
        for path in sorted(ISTIO_DIR.glob("*.yaml"))
        for obj in load_documents(path)
    }
    patches = envoy_filter_patches()
    policy = one(
        load_documents(ISTIO_DIR / "authorizationpolicy.yaml"), "AuthorizationPolicy"
    )

    assert kinds == {
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("install.istio.io/v1alpha1", "IstioOperator"),
        ("security.istio.io/v1", "AuthorizationPolicy"),
    }
    assert set(patches) == {"HTTP_FILTER", "HTTP_ROUTE"}
    http_filter = patches["HTTP_FILTER"]
    assert http_filter["match"]["context"] == "GATEWAY"
    assert http_filter["match"]["listener"]["filterChain"]["filter"] == {
        "name": HCM,
        "subFilter": {"name": ROUTER},
    }
    assert http_filter["patch"]["operation"] == "INSERT_BEFORE"
    assert http_filter["patch"]["value"]["name"] == RATELIMIT
    assert patches["HTTP_ROUTE"]["patch"]["operation"] == "MERGE"
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == ext_authz_provider()["name"]
    assert policy["spec"]["selector"] == {"matchLabels": {"istio": "ingressgateway"}}


def test_istio_points_at_the_deployed_service() -> None:
    """Cluster name and provider address follow the Service of deploy/k8s."""
    service = one(load_documents(PLAIN_MANIFEST), "Service")
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    meta = service["metadata"]
    host = f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
    provider = ext_authz_provider()["envoyExtAuthzGrpc"]

    assert rate_limit_cluster() == f"outbound|{grpc['port']}||{host}"
    assert (provider["service"], provider["port"]) == (host, grpc["port"])
    assert provider["failOpen"] is False


def test_istio_descriptors_come_from_ext_authz_metadata(tmp_path: Path) -> None:
    """Metadata actions read the keys Check returns, named as the policy expects."""
    domain = deployed_policy_domain(tmp_path)
    filter_config = envoy_filter_patches()["HTTP_FILTER"]["patch"]["value"][
        "typed_config"
    ]
    rate_limits = envoy_filter_patches()["HTTP_ROUTE"]["patch"]["value"]["route"][
        "rate_limits"
    ]
    from_metadata = {
        action["metadata"]["descriptor_key"]: action["metadata"]
        for limit in rate_limits
        for action in limit["actions"]
        if "metadata" in action
    }

    assert filter_config["domain"] == domain.name
    assert set(from_metadata) == {domain.identity_key, domain.tier_key}
    for key, metadata in from_metadata.items():
        assert metadata["source"] == "DYNAMIC"
        assert metadata["metadata_key"]["key"] == EXT_AUTHZ
        assert metadata["metadata_key"]["path"] == [
            {"key": {domain.identity_key: "identity", domain.tier_key: "tier"}[key]}
        ]
    assert domain.identity_key in {rule.key for rule in domain.descriptors}


def istio_like_bootstrap() -> dict[str, Any]:
    """A gateway listener as Istio would build it with the two patches applied."""
    cluster = rate_limit_cluster()
    provider = ext_authz_provider()["envoyExtAuthzGrpc"]
    authz_cluster = f"outbound|{provider['port']}||{provider['service']}"
    route = {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}
    route["route"].update(
        envoy_filter_patches()["HTTP_ROUTE"]["patch"]["value"]["route"]
    )
    ext_authz = {
        "name": EXT_AUTHZ,
        "typed_config": {
            "@type": f"{TYPE}envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": provider["failOpen"],
            "grpc_service": {
                "envoy_grpc": {"cluster_name": authz_cluster},
                "timeout": provider["timeout"],
            },
        },
    }
    router = {
        "name": ROUTER,
        "typed_config": {
            "@type": f"{TYPE}envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": f"{TYPE}envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "route_config": {
            "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": [route]}]
        },
        "http_filters": [
            ext_authz,
            envoy_filter_patches()["HTTP_FILTER"]["patch"]["value"],
            router,
        ],
    }

    def static_cluster(name: str, http2: bool) -> dict[str, Any]:
        protocol = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        options = {
            protocol: {
                "@type": f"{TYPE}{protocol}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
        address = {"socket_address": {"address": "127.0.0.1", "port_value": 8081}}
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            **({"typed_extension_protocol_options": options} if http2 else {}),
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
            },
        }

    clusters = {cluster: True, authz_cluster: True, "backend": False}
    listener_address = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": listener_address,
                    "filter_chains": [
                        {"filters": [{"name": HCM, "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                static_cluster(name, http2) for name, http2 in clusters.items()
            ],
        }
    }


@pytest.mark.envoy
def test_istio_patches_are_valid_envoy_config(tmp_path: Path) -> None:
    """The EnvoyFilter's filter and route actions pass `envoy --mode validate`."""
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(istio_like_bootstrap()))

    result = validate_config(path)

    assert result.returncode == 0, result.stdout + result.stderr
