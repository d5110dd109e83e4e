"""What an admin operation can refuse, each with the gRPC status it answers.

``status`` is the status code's name, so this module needs no gRPC; the
adapter turns it into ``grpc.StatusCode`` and the audit log records it.
"""

from __future__ import annotations

from typing import ClassVar

from ratelimit_ext.errors import Problem


class AdminError(Exception):
    """An expected refusal: the request cannot be carried out as asked."""

    status: ClassVar[str] = "FAILED_PRECONDITION"


class InvalidRequest(AdminError):
    """A malformed or incomplete request (INVALID_ARGUMENT)."""

    status = "INVALID_ARGUMENT"


class PolicyRejected(AdminError):
    """The resulting policy set does not validate (INVALID_ARGUMENT)."""

    status = "INVALID_ARGUMENT"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(str(problem) for problem in problems)
        super().__init__(f"the resulting policy does not validate:\n{lines}")


class NotFound(AdminError):
    """The named grant, override, version or domain does not exist (NOT_FOUND)."""

    status = "NOT_FOUND"


class Conflict(AdminError):
    """The current state does not allow it (FAILED_PRECONDITION)."""

    status = "FAILED_PRECONDITION"


class DigestMismatch(AdminError):
    """The files changed since the caller looked (ABORTED)."""

    status = "ABORTED"


class Unsupported(AdminError):
    """This process or its store cannot do it (UNIMPLEMENTED)."""

    status = "UNIMPLEMENTED"
