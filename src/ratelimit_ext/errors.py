"""Domain errors shared by several layers."""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """A counter store could not answer: every backend error becomes this.

    The failure policy is decided on this one type, in one place (the decision
    engine's caller), never inside a store.
    """


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy file, at a place in it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class PolicyError(Exception):
    """A policy set that must not be served; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
