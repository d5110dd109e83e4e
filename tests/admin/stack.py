"""A real server process with its admin API, a token file and a config directory."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from harness.ports import LOOPBACK, free_port
from harness.server import ServerProcess
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.client import AdminClient
from ratelimit_ext.policy.keys import hash_key

DOMAIN = "api"
TOKEN = "admin-token-7f3a9c"
ALICE_KEY = "alice-key-123"

POLICY = """\
domain: api
descriptors:
  - key: user_id
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: path
    value: /search
    rate_limit: {unit: minute, requests_per_unit: 2}
"""

KEYS = f"""\
api_keys:
  - {{sha256: {hash_key(ALICE_KEY)}, identity: alice, tier: pro}}
"""

T = TypeVar("T")


def write_config(directory: Path, limit: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(
        POLICY.replace("requests_per_unit: 3", f"requests_per_unit: {limit}")
    )
    (directory / "keys.yaml").write_text(KEYS)
    return directory


def policy_text(limit: int) -> str:
    return POLICY.replace("requests_per_unit: 3", f"requests_per_unit: {limit}")


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@dataclass
class AdminStack:
    """The server process, its admin address and where its files are."""

    root: Path
    config: Path
    token_file: Path
    server: ServerProcess
    admin_address: str

    @property
    def audit_file(self) -> Path:
        return self.root / "audit.jsonl"

    def client(
        self, *, token: str | None = TOKEN, actor: str = "ops@example.com"
    ) -> AdminClient:
        """A client sending ``token`` (``None``: no token at all)."""
        token_file = None
        if token is not None:
            token_file = self.root / f"client-token-{abs(hash(token))}"
            token_file.write_text(token)
        return AdminClient(self.admin_address, token_file=token_file, actor=actor)

    def call(self, method: str, request: object, response: type[T], **kw: object) -> T:
        with self.client(**kw) as client:  # type: ignore[arg-type]
            return client.call(method, request, response)  # type: ignore[arg-type,type-var,no-any-return]

    def hit(
        self, *entries: tuple[str, str], hits: int = 1, domain: str = DOMAIN
    ) -> rls_pb2.RateLimitResponse:
        """One ShouldRateLimit on the data port."""
        descriptor = ratelimit_pb2.RateLimitDescriptor()
        for key, value in entries:
            descriptor.entries.add(key=key, value=value)
        request = rls_pb2.RateLimitRequest(
            domain=domain, descriptors=[descriptor], hits_addend=hits
        )
        with self.server.channel() as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            response: rls_pb2.RateLimitResponse = stub.ShouldRateLimit(
                request, timeout=5.0
            )
        return response

    def policy(self) -> pb.GetPolicyResponse:
        return self.call("GetPolicy", pb.GetPolicyRequest(), pb.GetPolicyResponse)


def start_stack(
    root: Path, *extra: str, token: bool = True, reuse_config: bool = False
) -> AdminStack:
    """Start a server on ``root/config`` (written unless ``reuse_config``)."""
    config = root / "config" if reuse_config else write_config(root / "config")
    token_file = root / "admin.token"
    token_file.write_text(TOKEN + "\n")
    admin_address = f"{LOOPBACK}:{free_port()}"
    args = ["--admin-listen", admin_address, *extra]
    if token:
        args += ["--admin-token-file", str(token_file)]
    server = ServerProcess(config, root, metrics=False, extra_args=args).start()
    return AdminStack(root, config, token_file, server, admin_address)


def eventually(check: Callable[[], T], timeout: float = 2.0) -> T:
    """``check()``'s first truthy answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            assert found, f"not true within {timeout}s"
            return found
        time.sleep(0.02)


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status a call ends with (``OK`` if it returns)."""
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client one (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], check=True, capture_output=True, cwd=directory
        )

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca",
    )  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=ops-{name}",
        )  # fmt: skip
        (directory / f"{name}.ext").write_text(extra + "\n" if extra else "\n")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey",
            "ca.key", "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
            "-extfile", f"{name}.ext",
        )  # fmt: skip
    return {p.stem + p.suffix: p for p in directory.iterdir()}
