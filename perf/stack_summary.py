"""Summarize py-spy collapsed stacks (``bench_rls.py --py-spy DIR``) as text.

    python perf/stack_summary.py DIR/redis.collapsed [--top 25] [--match 'redis|store']

Prints the share of samples in which each function is on the stack (inclusive)
and at the top of it (self). Line numbers are dropped so a function counts once.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

LINE_NO = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    return LINE_NO.sub(")", frame.strip())


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append(([frame_name(f) for f in stack.split(";")], int(count)))
    return stacks


def tally(stacks: list[tuple[list[str], int]]) -> tuple[Counter[str], Counter[str]]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    return inclusive, own


def print_top(
    title: str, counts: Counter[str], total: int, top: int, match: str
) -> None:
    print(f"\n{title}")
    shown = [(n, c) for n, c in counts.most_common() if re.search(match, n)][:top]
    for name, count in shown:
        print(f"{100 * count / total:6.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--match", default="", help="only functions matching this regex"
    )
    args = parser.parse_args()
    stacks = read_stacks(args.collapsed)
    total = sum(count for _, count in stacks)
    if not total:
        raise SystemExit(f"{args.collapsed}: no samples")
    inclusive, own = tally(stacks)
    print(f"{args.collapsed}: {total} samples")
    print_top("inclusive (on the stack)", inclusive, total, args.top, args.match)
    print_top("self (top of the stack)", own, total, args.top, args.match)


if __name__ == "__main__":
    main()
