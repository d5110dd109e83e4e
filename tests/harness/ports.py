"""Loopback ports for processes started by the test suite."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago.

    The kernel picks it (bind to port 0); the socket is closed again, so a
    process started right after can bind it. Never use fixed ports in tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]

    return port
