"""Policy files on disk -> one validated ``Policy``.

This module owns ``load_policy``: it reads the files (``sources``), tells a
domain policy from an API keys file and from a bypass file and hands each to
its parser (``domain_parser``, ``keys_parser``, ``bypass_parser``), then
checks what must be unique across files. All files are read and checked
before anything is returned: either every problem is raised together in one
``PolicyError``, or a complete ``Policy`` comes back.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable

from yaml import MappingNode, ScalarNode

from ratelimit_ext.errors import PolicyError, Problem
from ratelimit_ext.policy.bypass_parser import BypassFile, parse_bypass_file
from ratelimit_ext.policy.domain_parser import parse_domain
from ratelimit_ext.policy.keys_parser import parse_keys_file
from ratelimit_ext.policy.model import ApiKey, Domain, Policy, Source
from ratelimit_ext.policy.sources import SourceFile, digest, read_sources
from ratelimit_ext.policy.yaml_nodes import Reader, compose, is_null

logger = logging.getLogger(__name__)

_FILE_KIND_HINT = (
    "not a policy file: expected a domain policy (top-level 'domain:'), "
    "an API keys file (top-level 'api_keys:') or a bypass file "
    "(top-level 'bypass_grants:' or 'emergency_levels:')"
)
_BYPASS_KEYS = frozenset({"bypass_grants", "emergency_levels"})


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load a policy file, or every YAML file under a directory.

    In a directory, ``*.yaml`` and ``*.yml`` files are found recursively and
    read in order of their relative path; every entry whose name starts with
    a dot is skipped at every level (so a Kubernetes ConfigMap mount, with its
    ``..data`` and ``..<timestamp>`` directories, is read once through its
    visible symlinks). Raises ``PolicyError`` with every problem found.
    """
    problems: list[Problem] = []
    sources = read_sources(path, problems)
    domains: list[Domain] = []
    api_keys: list[ApiKey] = []
    bypass = BypassFile()
    for source in sources:
        _parse_source(source, problems, domains, api_keys, bypass)
    _check_unique_domains(domains, problems)
    _check_unique_keys(api_keys, problems)
    _check_unique_bypass_ids(bypass, problems)
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: (p.file, p.line)))

    return Policy(
        domains=tuple(domains),
        api_keys=tuple(api_keys),
        bypass_grants=tuple(bypass.grants),
        emergency_levels=tuple(bypass.levels),
        files=tuple(source.display for source in sources),
        digest=digest(sources),
    )


# --- one file -----------------------------------------------------------------


def _parse_source(
    source: SourceFile,
    problems: list[Problem],
    domains: list[Domain],
    api_keys: list[ApiKey],
    bypass: BypassFile,
) -> None:
    reader = Reader(source.display, problems)
    root = compose(source, problems)
    if root is None or is_null(root):
        logger.debug("skipping %s: no YAML document", source.display)
        return
    if not isinstance(root, MappingNode):
        reader.report(root, _FILE_KIND_HINT)
        return
    top_keys = {key.value for key, _ in root.value if isinstance(key, ScalarNode)}
    if "domain" in top_keys:
        domain = parse_domain(reader, root)
        domains.extend([domain] if domain is not None else [])
    elif "api_keys" in top_keys:
        api_keys.extend(parse_keys_file(reader, root))
    elif top_keys & _BYPASS_KEYS:
        found = parse_bypass_file(reader, root)
        bypass.grants.extend(found.grants)
        bypass.levels.extend(found.levels)
    else:
        reader.report(root, _FILE_KIND_HINT)


# --- checks across files ------------------------------------------------------


def _check_unique_domains(domains: list[Domain], problems: list[Problem]) -> None:
    _report_duplicates(
        ((domain.name, domain.source) for domain in domains),
        lambda name: f"domain '{name}'",
        problems,
    )


def _check_unique_keys(api_keys: list[ApiKey], problems: list[Problem]) -> None:
    _report_duplicates(
        ((key.sha256, key.source) for key in api_keys),
        lambda digest: f"api key sha256 {digest[:8]}...",
        problems,
    )


def _check_unique_bypass_ids(bypass: BypassFile, problems: list[Problem]) -> None:
    """Grants and emergency levels share one namespace of ids."""
    grants = ((grant.id, grant.source) for grant in bypass.grants)
    levels = ((level.id, level.source) for level in bypass.levels)
    _report_duplicates(
        itertools.chain(grants, levels),
        lambda name: f"bypass id '{name}'",
        problems,
    )


def _report_duplicates(
    items: Iterable[tuple[str, Source | None]],
    label: Callable[[str], str],
    problems: list[Problem],
) -> None:
    """Report every repeated name at both places it is written."""
    first: dict[str, Source] = {}
    for name, source in items:
        if source is None:
            continue
        earlier = first.setdefault(name, source)
        if earlier is source:
            continue
        what = label(name)
        problems.append(
            Problem(source.file, source.line, f"{what} is already defined at {earlier}")
        )
        problems.append(
            Problem(earlier.file, earlier.line, f"{what} is defined again at {source}")
        )
