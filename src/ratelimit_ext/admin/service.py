"""The admin gRPC service: protos in, admin operations, statuses out.

Authentication happens before this code (``auth.TokenInterceptor``). Each
method checks its request, runs the operation (file work in a worker thread,
off the data path's event loop) and answers. Every mutating call, carried
out or refused, is appended to the audit log. After a change to the policy
files, a server runs its reloader at once (the normal reload path, the same
code the file watcher triggers), so the reply can say whether the new digest
is in force.

Expected refusals are ``AdminError`` subclasses, each mapped to one status;
a store failure is ``UNAVAILABLE``; a file system failure is
``FAILED_PRECONDITION``; a bug is logged with its traceback and ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from ratelimit_ext import __version__
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin import convert
from ratelimit_ext.admin.api import ACTOR_METADATA, METHODS
from ratelimit_ext.admin.audit import AuditLog, AuditRecord
from ratelimit_ext.admin.auth import principal
from ratelimit_ext.admin.counters import CounterAdmin
from ratelimit_ext.admin.errors import AdminError, InvalidRequest, Unsupported
from ratelimit_ext.admin.files import check_name
from ratelimit_ext.admin.grantbook import GrantBook, GrantChange, GrantRequest
from ratelimit_ext.admin.grants import BYPASS_FILE, OVERRIDES_FILE
from ratelimit_ext.admin.writer import Change, PolicyWriter
from ratelimit_ext.decision import DecisionEngine
from ratelimit_ext.errors import PolicyError, StoreError
from ratelimit_ext.policy.compiled import ActivePolicy
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import BypassMode, Policy
from ratelimit_ext.policy.reload import PolicyReloader
from ratelimit_ext.store.base import Store
from ratelimit_ext.store.guard import GuardedStore
from ratelimit_ext.store.url import redact_url
from ratelimit_ext.verdict import DescriptorVerdict

logger = logging.getLogger(__name__)

_AUDIT_LIMIT = 100
_AUDIT_MAX = 10_000

Context: TypeAlias = grpc.aio.ServicerContext
Handler: TypeAlias = Callable[[Any, Context], Awaitable[Message]]
T = TypeVar("T", Change, GrantChange)


@dataclass(frozen=True, slots=True)
class ServerRuntime:
    """The running server's parts that the admin API reads and uses."""

    policy: ActivePolicy
    engine: DecisionEngine
    store: Store
    store_url: str
    reloader: PolicyReloader | None
    shadow_mode: bool = False


class AdminServicer:
    """Admin calls over one config directory; ``runtime`` only in a server."""

    def __init__(
        self,
        *,
        config: Path,
        writer: PolicyWriter,
        audit: AuditLog,
        runtime: ServerRuntime | None = None,
        role: str = "server",
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._writer = writer
        self._grants = GrantBook(writer, clock)
        self._audit = audit
        self._runtime = runtime
        self._counters = (
            CounterAdmin(runtime.policy, runtime.engine, runtime.store)
            if runtime
            else None
        )
        self._role = role
        self._on_change = on_change
        self._clock = clock
        self._started = clock()

    async def close(self) -> None:
        """Release what the servicer holds (the store's audit list)."""
        await self._audit.close()

    def handlers(self) -> dict[str, tuple[Handler, type[Message]]]:
        """Method name -> (behaviour behind the error boundary, request type)."""
        return {
            name: (self._boundary(name, getattr(self, name)), request)
            for name, (request, _) in METHODS.items()
        }

    # --- server and policy ------------------------------------------------------

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        info = pb.GetServerInfoResponse(
            version=__version__,
            role=self._role,
            config=str(self._config),
            started_at=convert.timestamp(self._started),
        )
        runtime = self._runtime
        if runtime is None:
            return info
        counter = runtime.engine.counter
        breaker = (
            runtime.store.breaker if isinstance(runtime.store, GuardedStore) else None
        )
        info.store = redact_url(runtime.store_url)
        info.store_healthy = counter.health.healthy
        info.store_breaker = breaker.state.value if breaker else ""
        info.shadow_mode = runtime.shadow_mode
        info.reloader.CopyFrom(self._reloader_status(runtime))
        return info

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: Context
    ) -> pb.GetPolicyResponse:
        if self._runtime is None:
            return await asyncio.to_thread(self._policy_on_disk)
        status = self._reloader_status(self._runtime)
        response = _policy_proto(self._runtime.policy.current.policy)
        response.loaded_at.CopyFrom(status.loaded_at)
        response.rejected_digest = status.rejected_digest
        response.rejected_problems.extend(status.problems)
        return response

    async def ValidatePolicy(
        self, request: pb.ValidatePolicyRequest, context: Context
    ) -> pb.ValidatePolicyResponse:
        if not request.files:
            raise InvalidRequest("files: at least one")
        changes = _file_changes(request.files, ())
        validation = await asyncio.to_thread(
            self._writer.directory.validate, changes, standalone=request.standalone
        )
        return pb.ValidatePolicyResponse(
            valid=validation.valid,
            problems=[convert.problem_proto(p) for p in validation.problems],
            digest=validation.digest,
        )

    async def ApplyPolicy(
        self, request: pb.ApplyPolicyRequest, context: Context
    ) -> pb.ApplyPolicyResponse:
        changes = _file_changes(request.files, request.delete)
        replace_under = _directory_name(request.replace_under)
        if not changes and not replace_under:
            raise InvalidRequest("files or delete: at least one")
        actor = _actor(request.actor, context)
        target = ", ".join(sorted(changes)) or f"{replace_under}/"

        def apply() -> Change:
            with self._writer.transaction():
                written, version = self._writer.write(
                    changes,
                    actor=actor,
                    action="ApplyPolicy",
                    expected_digest=request.expected_digest,
                    replace_under=replace_under,
                )
            return Change(
                target=target,
                before=_file_digests(written.before),
                after=_file_digests(changes),
                digest=written.digest,
                previous_digest=written.previous_digest,
                version=version,
            )

        change, in_force = await self._mutate(
            context, "ApplyPolicy", actor, target, lambda: asyncio.to_thread(apply)
        )
        return pb.ApplyPolicyResponse(
            digest=change.digest,
            previous_digest=change.previous_digest,
            in_force=in_force,
            version=change.version.number if change.version else 0,
        )

    # --- bypass grants and overrides ----------------------------------------------

    async def ListBypassGrants(
        self, request: pb.ListBypassGrantsRequest, context: Context
    ) -> pb.ListBypassGrantsResponse:
        grants, overrides = await asyncio.to_thread(self._grants.entries)
        now = self._clock()
        return pb.ListBypassGrantsResponse(
            grants=[convert.grant_proto(r, BYPASS_FILE, now) for r in grants],
            overrides=[convert.grant_proto(r, OVERRIDES_FILE, now) for r in overrides],
        )

    async def GrantBypass(
        self, request: pb.GrantBypassRequest, context: Context
    ) -> pb.BypassGrantChange:
        actor = _actor(request.actor, context)
        mode = convert.mode_of(request.mode)
        if not request.HasField("expires_at"):
            raise InvalidRequest("expires_at: required; every grant expires")
        spec = GrantRequest(
            subject=convert.subject_of(request.subject),
            mode=mode,
            reason=request.reason,
            expires_at=convert.seconds_of(request.expires_at),
            factor=request.factor
            if request.factor or mode is BypassMode.PARTIAL
            else None,
            starts_at=(
                convert.seconds_of(request.starts_at)
                if request.HasField("starts_at")
                else None
            ),
            requires_approval=request.requires_approval,
            id=request.id,
        )
        return await self._grant_call(
            context,
            "GrantBypass",
            actor,
            BYPASS_FILE,
            lambda: self._grants.grant(spec, actor),
        )

    async def ApproveBypass(
        self, request: pb.ApproveBypassRequest, context: Context
    ) -> pb.BypassGrantChange:
        actor = _actor(request.actor, context)
        grant_id = _required(request.id, "id")
        return await self._grant_call(
            context,
            "ApproveBypass",
            actor,
            BYPASS_FILE,
            lambda: self._grants.approve(grant_id, actor),
        )

    async def RevokeBypass(
        self, request: pb.RevokeBypassRequest, context: Context
    ) -> pb.BypassGrantChange:
        actor = _actor(request.actor, context)
        grant_id = _required(request.id, "id")
        return await self._grant_call(
            context,
            "RevokeBypass",
            actor,
            BYPASS_FILE,
            lambda: self._grants.revoke(grant_id, actor),
        )

    async def SetOverride(
        self, request: pb.SetOverrideRequest, context: Context
    ) -> pb.BypassGrantChange:
        actor = _actor(request.actor, context)
        subject = convert.subject_of(request.subject)
        if not request.HasField("expires_at"):
            raise InvalidRequest("expires_at: required; every override expires")
        expires_at = convert.seconds_of(request.expires_at)
        return await self._grant_call(
            context,
            "SetOverride",
            actor,
            OVERRIDES_FILE,
            lambda: self._grants.set_override(
                subject, request.factor, expires_at, request.reason, actor
            ),
        )

    async def ClearOverride(
        self, request: pb.ClearOverrideRequest, context: Context
    ) -> pb.BypassGrantChange:
        actor = _actor(request.actor, context)
        subject = None
        if not request.id:
            subject = convert.subject_of(request.subject, "id or subject")
        return await self._grant_call(
            context,
            "ClearOverride",
            actor,
            OVERRIDES_FILE,
            lambda: self._grants.clear_override(request.id, subject, actor),
        )

    # --- counters ---------------------------------------------------------------

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: Context
    ) -> pb.GetUsageResponse:
        counters = self._counters_or_refuse()
        entries = convert.entries_of(request.entries, "entries")
        verdict = await counters.usage(request.domain, entries, request.identity)
        return _usage_proto(verdict)

    async def ResetCounters(
        self, request: pb.ResetCountersRequest, context: Context
    ) -> pb.ResetCountersResponse:
        counters = self._counters_or_refuse()
        entries = convert.entries_of(request.entries, "entries")
        actor = _actor(request.actor, context)
        asked = {
            "domain": request.domain,
            "entries": [list(entry) for entry in entries],
            "identity": request.identity,
        }

        async def reset() -> Change:
            subjects, removed = await counters.reset(
                request.domain, entries, request.identity
            )
            after = {**asked, "subjects": subjects, "removed": removed}
            return Change("counters", asked, after, "", "")

        change, _ = await self._mutate(
            context, "ResetCounters", actor, "counters", reset, reload=False
        )
        return pb.ResetCountersResponse(
            subjects=change.after["subjects"], removed=change.after["removed"]
        )

    # --- audit and versions ---------------------------------------------------------

    async def ListAudit(
        self, request: pb.ListAuditRequest, context: Context
    ) -> pb.ListAuditResponse:
        limit = min(request.limit or _AUDIT_LIMIT, _AUDIT_MAX)
        records = await self._audit.read(limit)
        return pb.ListAuditResponse(records=[convert.audit_proto(r) for r in records])

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: Context
    ) -> pb.ListVersionsResponse:
        versions = await asyncio.to_thread(self._writer.history.versions)
        return pb.ListVersionsResponse(
            versions=[convert.version_proto(v) for v in versions]
        )

    async def Rollback(
        self, request: pb.RollbackRequest, context: Context
    ) -> pb.RollbackResponse:
        actor = _actor(request.actor, context)

        def rollback() -> Change:
            return self._writer.rollback(request.to, actor)

        change, in_force = await self._mutate(
            context, "Rollback", actor, "generated", lambda: asyncio.to_thread(rollback)
        )
        version = convert.version_proto(change.version) if change.version else None
        return pb.RollbackResponse(
            version=version, digest=change.digest, in_force=in_force
        )

    # --- helpers --------------------------------------------------------------------

    async def _grant_call(
        self,
        context: Context,
        method: str,
        actor: str,
        file: str,
        work: Callable[[], GrantChange],
    ) -> pb.BypassGrantChange:
        result, in_force = await self._mutate(
            context, method, actor, file, lambda: asyncio.to_thread(work)
        )
        change = result.change
        return pb.BypassGrantChange(
            grant=convert.grant_proto(result.record, file, self._clock()),
            digest=change.digest,
            in_force=in_force,
            version=change.version.number if change.version else 0,
        )

    async def _mutate(
        self,
        context: Context,
        method: str,
        actor: str,
        target: str,
        work: Callable[[], Awaitable[T]],
        *,
        reload: bool = True,
    ) -> tuple[T, bool]:
        """Run a change, audit it (done or refused), then reload the policy.

        Returns the result and whether the written digest is in force.
        """
        record = AuditRecord(
            self._clock(), actor, context.peer(), principal(context), method, target, ""
        )
        try:
            result = await work()
        except (AdminError, StoreError, OSError) as exc:
            outcome = _status_of(exc).name
            failed = _with(record, outcome=outcome, after={"error": str(exc)[:2000]})
            await self._audit.record(failed)
            raise
        change = result if isinstance(result, Change) else result.change
        done = _with(record, outcome="ok", before=change.before, after=change.after)
        await self._audit.record(done)
        if not reload:
            return result, False
        in_force = await self._reload(change.digest)
        if self._on_change is not None:
            self._on_change()
        return result, in_force

    async def _reload(self, digest: str) -> bool:
        """Run the server's reload path now; is ``digest`` in force after it?"""
        runtime = self._runtime
        if runtime is None:
            return False
        if runtime.reloader is not None:
            await runtime.reloader.check()
        return runtime.policy.current.policy.digest == digest

    def _counters_or_refuse(self) -> CounterAdmin:
        if self._counters is None:
            raise Unsupported(
                f"the {self._role} has no counters; ask a server's admin port"
            )
        return self._counters

    def _reloader_status(self, runtime: ServerRuntime) -> pb.ReloaderStatus:
        policy = runtime.policy.current.policy
        if runtime.reloader is None:
            return pb.ReloaderStatus(
                watching=False,
                digest=policy.digest,
                loaded_at=convert.timestamp(self._started),
            )
        status = runtime.reloader.status
        return pb.ReloaderStatus(
            watching=True,
            digest=status.digest,
            loaded_at=convert.timestamp(status.loaded_at),
            reloads=status.reloads,
            rejections=status.rejections,
            rejected_digest=status.rejected_digest or "",
            problems=status.problems,
        )

    def _policy_on_disk(self) -> pb.GetPolicyResponse:
        try:
            policy = load_policy(self._config)
        except PolicyError as exc:
            digest = self._writer.directory.digest()
            problems = [str(problem) for problem in exc.problems]
            return pb.GetPolicyResponse(
                rejected_digest=digest, rejected_problems=problems
            )
        response = _policy_proto(policy)
        response.loaded_at.CopyFrom(convert.timestamp(self._clock()))
        return response

    def _boundary(self, name: str, handler: Handler) -> Handler:
        async def call(request: Any, context: Context) -> Message:
            if request is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {name} request"
                )
            try:
                return await handler(request, context)
            except AdminError as exc:
                await _abort(context, _status_of(exc), str(exc))
            except StoreError as exc:
                await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
            except OSError as exc:
                logger.warning("admin call %s: file system error: %s", name, exc)
                await _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"cannot change the policy files: {exc}",
                )
            except Exception:
                logger.exception("admin call %s failed", name)
                await _abort(
                    context, grpc.StatusCode.INTERNAL, "internal error (logged)"
                )

        return call


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


def _status_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, StoreError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, OSError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, AdminError):
        return grpc.StatusCode[exc.status]
    return grpc.StatusCode.INTERNAL


def _actor(given: str, context: Context) -> str:
    """The request's actor, else ``x-admin-actor``, else the mTLS name."""
    if given.strip():
        return given.strip()
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA and isinstance(value, str) and value.strip():
            return value.strip()
    return principal(context) or "anonymous"


def _required(text: str, field: str) -> str:
    if not text:
        raise InvalidRequest(f"{field}: required")
    return text


def _file_changes(files: Any, delete: Any) -> dict[str, bytes | None]:
    changes: dict[str, bytes | None] = {}
    for file in files:
        changes[check_name(file.name)] = file.content.encode()
    for name in delete:
        if check_name(name) in changes:
            raise InvalidRequest(f"{name}: both written and deleted")
        changes[check_name(name)] = None
    return changes


def _directory_name(name: str) -> str:
    """A directory under the config directory, for ``replace_under``."""
    if not name:
        return ""
    check_name(f"{name.strip('/')}/x.yaml")
    return str(PurePosixPath(name.strip("/")))


def _file_digests(files: Any) -> dict[str, str | None]:
    """name -> SHA-256 of its content (``None``: absent), for the audit log."""
    return {
        name: None if data is None else hashlib.sha256(data).hexdigest()
        for name, data in files.items()
    }


def _policy_proto(policy: Policy) -> pb.GetPolicyResponse:
    return pb.GetPolicyResponse(
        digest=policy.digest,
        files=policy.files,
        domains=sorted(domain.name for domain in policy.domains),
        api_keys=len(policy.api_keys),
        bypass_grants=len(policy.bypass_grants),
    )


def _usage_proto(verdict: DescriptorVerdict) -> pb.GetUsageResponse:
    usage = pb.GetUsageResponse(
        code=verdict.code.name,
        limited=verdict.window is not None,
        name=verdict.name or "",
        remaining=verdict.remaining if verdict.window is not None else 0,
        reset_seconds=verdict.reset_seconds,
    )
    if verdict.window is not None:
        window = verdict.window
        usage.limit.CopyFrom(
            pb.Limit(
                requests_per_unit=window.limit,
                unit=window.unit.name.lower(),
                algorithm=window.algorithm.value,
            )
        )
    return usage


def _with(record: AuditRecord, **changes: Any) -> AuditRecord:
    return replace(record, **changes)
