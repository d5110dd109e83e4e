"""Render the Helm chart and validate Kubernetes objects, without a cluster.

Rendering uses Helm's own Go library through PyPI's ``helm-python-sdk``
(``helm_python``: Helm v4's chart loader, values.schema.json validation,
template engine and linter); validation uses ``kubernetes-validate``'s
bundled OpenAPI schemas of one Kubernetes version, in strict mode (unknown
fields are errors).

``python tests/deploy/support.py`` rewrites ``deploy/k8s/ratelimit-ext.yaml``
from the chart's defaults; a test fails while the two differ.

The Dockerfile is read instruction by instruction (``stages``), so tests can
check its rules and run its builder stage without a Docker engine.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "ratelimit-ext"
K8S_DIR = REPO / "deploy" / "k8s"
ISTIO_DIR = REPO / "deploy" / "istio"
PLAIN_MANIFEST = K8S_DIR / "ratelimit-ext.yaml"
DOCKERFILE = REPO / "Dockerfile"

RELEASE = "ratelimit-ext"
NAMESPACE = "ratelimit-ext"
KUBE_VERSION = "1.33.0"
"""The Kubernetes version whose schemas every object is checked against."""

HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
"""Labels the chart adds that mean nothing without Helm."""

# Order of kinds in the plain manifest: what a pod needs comes first.
_KIND_ORDER = (
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "ServiceMonitor",
)


def render_text(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path -> rendered text, as ``helm template`` makes it.

    Raises ``helm_python.HelmValuesError`` for values that
    values.schema.json rejects and ``helm_python.HelmRenderError`` for a
    template's ``fail``.
    """
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(
            dict(values or {}), name=release, namespace=namespace, is_install=True
        )


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """Every object the chart renders with ``values``, NOTES.txt left out."""
    texts = render_text(values, release=release, namespace=namespace)
    objects: list[dict[str, Any]] = []
    for path in sorted(texts):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(parse_documents(texts[path]))
    return objects


def parse_documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``text``."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_documents(path: Path) -> list[dict[str, Any]]:
    return parse_documents(path.read_text())


def schema_problem(obj: Mapping[str, Any]) -> str | None:
    """Why ``obj`` fails the Kubernetes schema of its kind, or None if it passes.

    Raises ``kubernetes_validate.SchemaNotFoundError`` for kinds without a
    bundled schema (custom resources such as ServiceMonitor).
    """
    try:
        kubernetes_validate.validate(dict(obj), KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path) or "<root>"
        return f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}"
    return None


def by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(obj) for obj in objects if obj["kind"] == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    """A container's env as name -> value (or the valueFrom mapping)."""
    return {
        item["name"]: item.get("value", item.get("valueFrom"))
        for item in container.get("env", [])
    }


def without_helm_labels(obj: Any) -> Any:
    """``obj`` with the Helm-only labels removed everywhere in it."""
    if isinstance(obj, dict):
        return {
            key: without_helm_labels(value)
            for key, value in obj.items()
            if key not in HELM_ONLY_LABELS
        }
    if isinstance(obj, list):
        return [without_helm_labels(item) for item in obj]
    return obj


def plain_manifest_text() -> str:
    """The chart's defaults as plain manifests: Helm-only labels dropped.

    Works on the rendered text, so the templates' comments stay.
    """
    texts = render_text()
    documents: list[tuple[int, str]] = []
    for path, text in texts.items():
        if path.endswith("NOTES.txt"):
            continue
        for chunk in text.split("\n---\n"):
            kept = [
                line
                for line in chunk.strip("\n").splitlines()
                if line.strip().split(":")[0] not in HELM_ONLY_LABELS
            ]
            parsed = parse_documents("\n".join(kept))
            if parsed:
                rank = _KIND_ORDER.index(parsed[0]["kind"])
                documents.append((rank, "\n".join(kept).strip("\n")))
    header = (
        "# ratelimit-ext as plain manifests: the Helm chart's defaults\n"
        '# (charts/ratelimit-ext, release and namespace "ratelimit-ext").\n'
        "# Generated by `python tests/deploy/support.py`; a test fails when it\n"
        "# and the chart differ, so change the chart and regenerate.\n"
        "#\n"
        "#   kubectl apply -k deploy/k8s\n"
    )
    body = "\n---\n".join(text for _, text in sorted(documents, key=lambda d: d[0]))
    return f"{header}---\n{body}\n"


# --- the Dockerfile ------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if stripped.endswith("\\"):
            continue
        name, _, args = pending.strip().partition(" ")
        found.append((name.upper(), args.strip()))
        pending = ""
    return found


def stages() -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs and the stages of the Dockerfile."""
    args: dict[str, str] = {}
    parsed: list[Stage] = []
    for name, rest in instructions(DOCKERFILE.read_text()):
        if name == "FROM":
            words = rest.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            parsed.append(Stage(words[0], alias))
        elif not parsed and name == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            parsed[-1].instructions.append((name, rest))
    return args, parsed


def final_stage() -> Stage:
    return stages()[1][-1]


def healthcheck_command() -> list[str]:
    """The final stage's HEALTHCHECK CMD, in exec form."""
    (healthcheck,) = final_stage().all("HEALTHCHECK")
    command: list[str] = json.loads(healthcheck.partition(" CMD ")[2])
    return command


if __name__ == "__main__":
    PLAIN_MANIFEST.write_text(plain_manifest_text())
    print(f"wrote {PLAIN_MANIFEST.relative_to(REPO)}", file=sys.stderr)
