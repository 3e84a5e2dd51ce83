"""Routing: which route a request takes (the admission per route is `auth.chain`'s).

Pure. This module owns the rules (docs/gateway.md, "Routes"):

- A path is routed only when it is canonical: no `.` or `..` segment, no `//`, no `\\`, no
  percent-encoded `/`, `\\`, `.` or NUL. Otherwise `/public/../api/x` would match a public
  route here and reach the upstream as `/api/x`: such a request is 400, never routed.
- Routes are tried in file order and the first whose `path` matches wins (`Route.matches`: an
  exact path, or a prefix glob `/prefix/*` that also matches `/prefix` itself); none: 404.
"""

from __future__ import annotations

import re

from loom.gateway.config import GatewayConfig, Route

__all__ = ["NotCanonical", "canonical_path", "route_for"]

# %2f %5c %2e %00 in any case: encoded separators and dots change what a path means to an
# upstream that decodes before routing.
_ENCODED = re.compile(r"%(2[fF]|5[cC]|2[eE]|00)")


class NotCanonical(ValueError):
    """A path that could mean another path to the upstream."""


def canonical_path(path: str) -> bool:
    """True when `path` can be routed as it is (module docstring)."""
    if not path.startswith("/") or "//" in path or "\\" in path or _ENCODED.search(path):
        return False
    return all(seg not in (".", "..") for seg in path.split("/"))


def route_for(config: GatewayConfig, path: str) -> Route | None:
    """The route for `path`, or None (404). Raises NotCanonical (400)."""
    if not canonical_path(path):
        raise NotCanonical(path)
    return config.route_for(path)
