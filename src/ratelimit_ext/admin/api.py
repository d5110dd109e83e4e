"""The admin API's service name and methods, shared by server and client.

The generated messages live in ``ratelimit_ext._proto``; the generated gRPC
stubs are not used, so that both ends stay typed: the server registers
generic handlers and the client builds its callables from this table.
"""

from __future__ import annotations

from google.protobuf.message import Message

from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb

SERVICE_NAME = "ratelimit_ext.admin.v1.Admin"
ACTOR_METADATA = "x-admin-actor"

METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "GetServerInfo": (pb.GetServerInfoRequest, pb.GetServerInfoResponse),
    "GetPolicy": (pb.GetPolicyRequest, pb.GetPolicyResponse),
    "ValidatePolicy": (pb.ValidatePolicyRequest, pb.ValidatePolicyResponse),
    "ApplyPolicy": (pb.ApplyPolicyRequest, pb.ApplyPolicyResponse),
    "ListBypassGrants": (pb.ListBypassGrantsRequest, pb.ListBypassGrantsResponse),
    "GrantBypass": (pb.GrantBypassRequest, pb.BypassGrantChange),
    "ApproveBypass": (pb.ApproveBypassRequest, pb.BypassGrantChange),
    "RevokeBypass": (pb.RevokeBypassRequest, pb.BypassGrantChange),
    "SetOverride": (pb.SetOverrideRequest, pb.BypassGrantChange),
    "ClearOverride": (pb.ClearOverrideRequest, pb.BypassGrantChange),
    "GetUsage": (pb.GetUsageRequest, pb.GetUsageResponse),
    "ResetCounters": (pb.ResetCountersRequest, pb.ResetCountersResponse),
    "ListAudit": (pb.ListAuditRequest, pb.ListAuditResponse),
    "ListVersions": (pb.ListVersionsRequest, pb.ListVersionsResponse),
    "Rollback": (pb.RollbackRequest, pb.RollbackResponse),
}
