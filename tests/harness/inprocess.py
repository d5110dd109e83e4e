"""A sidecar running inside the test's event loop, with stubs to call it."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from ratelimit_ext.server import Sidecar


@dataclass
class Running:
    sidecar: Sidecar
    channel: grpc.aio.Channel
    rls: rls_pb2_grpc.RateLimitServiceStub
    authz: external_auth_pb2_grpc.AuthorizationStub
