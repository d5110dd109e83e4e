"""Log lines: plain text, or JSON lines with the request's context.

``configure`` sets up the root logger once per process (``serve`` and each
worker). In JSON every line is one object: ``timestamp`` (UTC, RFC 3339),
``level``, ``logger``, ``message``, ``exception`` when there is one, and,
when the line is logged while a request is being decided, its ``domain``
and ``policy_version`` (the first 12 characters of the policy digest) and,
with tracing on, ``trace_id`` and ``span_id``.

The request context is a ``ContextVar`` that the decision engine sets once
per request (``bind_request``); grpc.aio runs every call in its own task, so
one call's context never shows up in another call's lines. Nothing here adds
secrets: messages are logged as the code wrote them, and the code never puts
API keys, tokens or passwords into them (store URLs go through
``redact_url``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

from ratelimit_ext.telemetry import current_trace_ids

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DOMAIN_CHARS = 64
"""A request's domain is request text: at most this much of it is logged."""

_request: ContextVar[tuple[str, str] | None] = ContextVar(
    "ratelimit_ext_request", default=None
)


def bind_request(domain: str, policy_digest: str) -> None:
    """The domain and policy of the request the current task is deciding."""
    _request.set((domain, policy_digest))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``fields`` are added to every line."""

    def __init__(
        self,
        fields: dict[str, object] | None = None,
        trace_ids: Callable[[], tuple[str, str] | None] = current_trace_ids,
    ) -> None:
        super().__init__()
        self._fields = dict(fields or {})
        self._trace_ids = trace_ids

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self._fields,
        }
        bound = _request.get()
        if bound is not None:
            line["domain"] = bound[0][:DOMAIN_CHARS]
            line["policy_version"] = bound[1][:12]
        ids = self._trace_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)

        return json.dumps(line, ensure_ascii=False, default=str)


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure(
    log_format: str,
    level: int | str,
    *,
    text_format: str = TEXT_FORMAT,
    fields: dict[str, object] | None = None,
) -> None:
    """Send every log line to stderr in ``log_format`` (``text`` or ``json``).

    ``fields`` (e.g. a worker's index) go into every JSON line; text lines
    carry them through ``text_format``. Raises ``ValueError`` for an unknown
    format.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(fields))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    # Like logging.basicConfig: a process whose root logger already has
    # handlers (an embedding program, a test runner) keeps them.
    logging.basicConfig(level=level, handlers=[handler])
    # watchfiles logs every batch of changes at INFO; the reloader logs outcomes
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
