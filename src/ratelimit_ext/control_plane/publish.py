"""Pushing ``generated/`` to servers through their admin API.

Each target gets one ``ApplyPolicy`` holding every file of ``generated/``
with ``replace_under: generated``, so the server's ``generated/`` becomes
exactly ours in one validated, atomic (per file) change that its normal
reload path puts in force. A target is pushed again only when our files
change, or until a push succeeds; a failing target is logged when it starts
and stops failing, not on every retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.client import AdminClient
from ratelimit_ext.admin.history import GENERATED_DIR, files_digest
from ratelimit_ext.admin.writer import PolicyWriter

logger = logging.getLogger(__name__)


class Publisher:
    """Keeps every target's ``generated/`` equal to ours."""

    def __init__(
        self,
        writer: PolicyWriter,
        targets: Sequence[str],
        *,
        token_file: Path | None = None,
        actor: str = "control-plane",
        timeout: float = 10.0,
    ) -> None:
        self._writer = writer
        self._targets = tuple(targets)
        self._token_file = token_file
        self._actor = actor
        self._timeout = timeout
        self._pushed: dict[str, str] = {}
        self._failing: set[str] = set()

    @property
    def pushed(self) -> dict[str, str]:
        """Target -> digest of the ``generated/`` files it last accepted."""
        return dict(self._pushed)

    async def sync(self) -> None:
        """Push to every target that lacks the current files (in parallel)."""
        files = await asyncio.to_thread(self._writer.generated_files)
        digest = files_digest(files)
        stale = [t for t in self._targets if self._pushed.get(t) != digest]
        await asyncio.gather(
            *(asyncio.to_thread(self._push, target, files, digest) for target in stale)
        )

    def _push(self, target: str, files: dict[str, bytes], digest: str) -> None:
        request = pb.ApplyPolicyRequest(
            files=[
                pb.PolicyFile(name=f"{GENERATED_DIR}/{name}", content=data.decode())
                for name, data in sorted(files.items())
            ],
            replace_under=GENERATED_DIR,
            actor=self._actor,
        )
        try:
            with AdminClient(
                target,
                token_file=self._token_file,
                actor=self._actor,
                timeout=self._timeout,
            ) as client:
                reply = client.call("ApplyPolicy", request, pb.ApplyPolicyResponse)
        except (grpc.RpcError, OSError) as exc:
            self._failed(target, exc)
            return
        self._pushed[target] = digest
        if target in self._failing:
            self._failing.discard(target)
            logger.info("publishing to %s works again", target)
        logger.info(
            "published generated/ %s to %s: policy %s (%s)",
            digest[:12],
            target,
            reply.digest[:12],
            "in force" if reply.in_force else "written",
        )

    def _failed(self, target: str, exc: Exception) -> None:
        if target in self._failing:
            return
        self._failing.add(target)
        if isinstance(exc, grpc.RpcError):
            detail = f"{exc.code().name}: {exc.details()}"
        else:
            detail = str(exc)
        logger.warning("cannot publish to %s (%s); retrying", target, detail)
