"""Deployment artifacts: Dockerfile, Helm chart, plain and Istio manifests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: builds the wheel and installs it into a fresh virtualenv"
        " (tens of seconds, downloads dependency wheels from PyPI)",
    )
