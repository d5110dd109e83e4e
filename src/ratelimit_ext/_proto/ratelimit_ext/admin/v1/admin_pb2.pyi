import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BypassMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BYPASS_MODE_UNSPECIFIED: _ClassVar[BypassMode]
    BYPASS_MODE_FULL: _ClassVar[BypassMode]
    BYPASS_MODE_PARTIAL: _ClassVar[BypassMode]

class GrantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_STATE_UNSPECIFIED: _ClassVar[GrantState]
    GRANT_STATE_PENDING_APPROVAL: _ClassVar[GrantState]
    GRANT_STATE_SCHEDULED: _ClassVar[GrantState]
    GRANT_STATE_ACTIVE: _ClassVar[GrantState]
    GRANT_STATE_EXPIRED: _ClassVar[GrantState]
BYPASS_MODE_UNSPECIFIED: BypassMode
BYPASS_MODE_FULL: BypassMode
BYPASS_MODE_PARTIAL: BypassMode
GRANT_STATE_UNSPECIFIED: GrantState
GRANT_STATE_PENDING_APPROVAL: GrantState
GRANT_STATE_SCHEDULED: GrantState
GRANT_STATE_ACTIVE: GrantState
GRANT_STATE_EXPIRED: GrantState

class Problem(_message.Message):
    __slots__ = ("file", "line", "message")
    FILE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    file: str
    line: int
    message: str
    def __init__(self, file: _Optional[str] = ..., line: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("identity", "api_key_sha256", "tier", "descriptor")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    identity: str
    api_key_sha256: str
    tier: str
    descriptor: DescriptorSubject
    def __init__(self, identity: _Optional[str] = ..., api_key_sha256: _Optional[str] = ..., tier: _Optional[str] = ..., descriptor: _Optional[_Union[DescriptorSubject, _Mapping]] = ...) -> None: ...

class DescriptorSubject(_message.Message):
    __slots__ = ("domain", "entries")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    domain: str
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, domain: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "role", "config", "store", "store_healthy", "store_breaker", "reloader", "started_at", "shadow_mode")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    STORE_HEALTHY_FIELD_NUMBER: _ClassVar[int]
    STORE_BREAKER_FIELD_NUMBER: _ClassVar[int]
    RELOADER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MODE_FIELD_NUMBER: _ClassVar[int]
    version: str
    role: str
    config: str
    store: str
    store_healthy: bool
    store_breaker: str
    reloader: ReloaderStatus
    started_at: _timestamp_pb2.Timestamp
    shadow_mode: bool
    def __init__(self, version: _Optional[str] = ..., role: _Optional[str] = ..., config: _Optional[str] = ..., store: _Optional[str] = ..., store_healthy: _Optional[bool] = ..., store_breaker: _Optional[str] = ..., reloader: _Optional[_Union[ReloaderStatus, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., shadow_mode: _Optional[bool] = ...) -> None: ...

class ReloaderStatus(_message.Message):
    __slots__ = ("watching", "digest", "loaded_at", "reloads", "rejections", "rejected_digest", "problems")
    WATCHING_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    RELOADS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    watching: bool
    digest: str
    loaded_at: _timestamp_pb2.Timestamp
    reloads: int
    rejections: int
    rejected_digest: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, watching: _Optional[bool] = ..., digest: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reloads: _Optional[int] = ..., rejections: _Optional[int] = ..., rejected_digest: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("digest", "files", "loaded_at", "domains", "api_keys", "bypass_grants", "rejected_digest", "rejected_problems")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    BYPASS_GRANTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REJECTED_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    files: _containers.RepeatedScalarFieldContainer[str]
    loaded_at: _timestamp_pb2.Timestamp
    domains: _containers.RepeatedScalarFieldContainer[str]
    api_keys: int
    bypass_grants: int
    rejected_digest: str
    rejected_problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digest: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., domains: _Optional[_Iterable[str]] = ..., api_keys: _Optional[int] = ..., bypass_grants: _Optional[int] = ..., rejected_digest: _Optional[str] = ..., rejected_problems: _Optional[_Iterable[str]] = ...) -> None: ...

class PolicyFile(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: str
    def __init__(self, name: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ValidatePolicyRequest(_message.Message):
    __slots__ = ("files", "standalone")
    FILES_FIELD_NUMBER: _ClassVar[int]
    STANDALONE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[PolicyFile]
    standalone: bool
    def __init__(self, files: _Optional[_Iterable[_Union[PolicyFile, _Mapping]]] = ..., standalone: _Optional[bool] = ...) -> None: ...

class ValidatePolicyResponse(_message.Message):
    __slots__ = ("valid", "problems", "digest")
    VALID_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    problems: _containers.RepeatedCompositeFieldContainer[Problem]
    digest: str
    def __init__(self, valid: _Optional[bool] = ..., problems: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., digest: _Optional[str] = ...) -> None: ...

class ApplyPolicyRequest(_message.Message):
    __slots__ = ("files", "delete", "actor", "expected_digest", "replace_under")
    FILES_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPLACE_UNDER_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[PolicyFile]
    delete: _containers.RepeatedScalarFieldContainer[str]
    actor: str
    expected_digest: str
    replace_under: str
    def __init__(self, files: _Optional[_Iterable[_Union[PolicyFile, _Mapping]]] = ..., delete: _Optional[_Iterable[str]] = ..., actor: _Optional[str] = ..., expected_digest: _Optional[str] = ..., replace_under: _Optional[str] = ...) -> None: ...

class ApplyPolicyResponse(_message.Message):
    __slots__ = ("digest", "previous_digest", "in_force", "version")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    digest: str
    previous_digest: str
    in_force: bool
    version: int
    def __init__(self, digest: _Optional[str] = ..., previous_digest: _Optional[str] = ..., in_force: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class BypassGrant(_message.Message):
    __slots__ = ("id", "subject", "mode", "factor", "reason", "actor", "starts_at", "expires_at", "requires_approval", "approved_by", "state", "file")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    id: str
    subject: Subject
    mode: BypassMode
    factor: float
    reason: str
    actor: str
    starts_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    requires_approval: bool
    approved_by: str
    state: GrantState
    file: str
    def __init__(self, id: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ..., mode: _Optional[_Union[BypassMode, str]] = ..., factor: _Optional[float] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requires_approval: _Optional[bool] = ..., approved_by: _Optional[str] = ..., state: _Optional[_Union[GrantState, str]] = ..., file: _Optional[str] = ...) -> None: ...

class ListBypassGrantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBypassGrantsResponse(_message.Message):
    __slots__ = ("grants", "overrides")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[BypassGrant]
    overrides: _containers.RepeatedCompositeFieldContainer[BypassGrant]
    def __init__(self, grants: _Optional[_Iterable[_Union[BypassGrant, _Mapping]]] = ..., overrides: _Optional[_Iterable[_Union[BypassGrant, _Mapping]]] = ...) -> None: ...

class GrantBypassRequest(_message.Message):
    __slots__ = ("subject", "mode", "factor", "reason", "starts_at", "expires_at", "requires_approval", "id", "actor")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    subject: Subject
    mode: BypassMode
    factor: float
    reason: str
    starts_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    requires_approval: bool
    id: str
    actor: str
    def __init__(self, subject: _Optional[_Union[Subject, _Mapping]] = ..., mode: _Optional[_Union[BypassMode, str]] = ..., factor: _Optional[float] = ..., reason: _Optional[str] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requires_approval: _Optional[bool] = ..., id: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ApproveBypassRequest(_message.Message):
    __slots__ = ("id", "actor")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RevokeBypassRequest(_message.Message):
    __slots__ = ("id", "actor", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetOverrideRequest(_message.Message):
    __slots__ = ("subject", "factor", "expires_at", "reason", "actor")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    subject: Subject
    factor: float
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    actor: str
    def __init__(self, subject: _Optional[_Union[Subject, _Mapping]] = ..., factor: _Optional[float] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ClearOverrideRequest(_message.Message):
    __slots__ = ("id", "subject", "actor")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    subject: Subject
    actor: str
    def __init__(self, id: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ..., actor: _Optional[str] = ...) -> None: ...

class BypassGrantChange(_message.Message):
    __slots__ = ("grant", "digest", "in_force", "version")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    grant: BypassGrant
    digest: str
    in_force: bool
    version: int
    def __init__(self, grant: _Optional[_Union[BypassGrant, _Mapping]] = ..., digest: _Optional[str] = ..., in_force: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("domain", "entries", "identity")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    domain: str
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    identity: str
    def __init__(self, domain: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., identity: _Optional[str] = ...) -> None: ...

class Limit(_message.Message):
    __slots__ = ("requests_per_unit", "unit", "algorithm")
    REQUESTS_PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    requests_per_unit: int
    unit: str
    algorithm: str
    def __init__(self, requests_per_unit: _Optional[int] = ..., unit: _Optional[str] = ..., algorithm: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("code", "limited", "name", "limit", "remaining", "reset_seconds")
    CODE_FIELD_NUMBER: _ClassVar[int]
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    code: str
    limited: bool
    name: str
    limit: Limit
    remaining: int
    reset_seconds: float
    def __init__(self, code: _Optional[str] = ..., limited: _Optional[bool] = ..., name: _Optional[str] = ..., limit: _Optional[_Union[Limit, _Mapping]] = ..., remaining: _Optional[int] = ..., reset_seconds: _Optional[float] = ...) -> None: ...

class ResetCountersRequest(_message.Message):
    __slots__ = ("domain", "entries", "identity", "actor")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    domain: str
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    identity: str
    actor: str
    def __init__(self, domain: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., identity: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ResetCountersResponse(_message.Message):
    __slots__ = ("subjects", "removed")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    subjects: int
    removed: int
    def __init__(self, subjects: _Optional[int] = ..., removed: _Optional[int] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "actor", "peer", "principal", "method", "target", "outcome", "before", "after")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    actor: str
    peer: str
    principal: str
    method: str
    target: str
    outcome: str
    before: str
    after: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., peer: _Optional[str] = ..., principal: _Optional[str] = ..., method: _Optional[str] = ..., target: _Optional[str] = ..., outcome: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("number", "created_at", "actor", "action", "files", "digest", "restored")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    number: int
    created_at: _timestamp_pb2.Timestamp
    actor: str
    action: str
    files: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    restored: int
    def __init__(self, number: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., restored: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Version]
    def __init__(self, versions: _Optional[_Iterable[_Union[Version, _Mapping]]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("to", "actor")
    TO_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    to: int
    actor: str
    def __init__(self, to: _Optional[int] = ..., actor: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("version", "digest", "in_force")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    version: Version
    digest: str
    in_force: bool
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ..., digest: _Optional[str] = ..., in_force: _Optional[bool] = ...) -> None: ...
