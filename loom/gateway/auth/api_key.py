"""API keys from a header or a query parameter (SECURITY-CATALOGUE E3).

Keys are kept only as SHA-256 digests. The presented key is digested and compared with every
configured digest by `hmac.compare_digest`, always all of them, so neither the position of the
matching key nor the length of a common prefix shows in the time taken. A key given both in
the header and the query, or twice, is ambiguous: 400, never "pick one".
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity, bad_request
from loom.gateway.config import ApiKey, ApiKeyConfig

__all__ = ["ApiKeyAuthenticator"]

log = logging.getLogger(__name__)
MAX_KEY_BYTES = 512


class ApiKeyAuthenticator:
    def __init__(self, config: ApiKeyConfig, *, name: str = "api_key") -> None:
        self.name = name
        self.config = config
        self.challenge: str | None = None  # no standard scheme for API keys
        self._keys: tuple[ApiKey, ...] = config.keys
        for k in config.keys:
            if k.plain:
                log.warning("API key %r is configured in plain text; store key_sha256", k.name)

    def _presented(self, request: AuthRequest) -> list[bytes]:
        found: list[bytes] = []
        if self.config.header:
            found += request.header_values(self.config.header)
        if self.config.query_param:
            found += [v.encode("utf-8", "surrogateescape")
                      for v in request.query_values(self.config.query_param)]
        return found

    async def authenticate(self, request: AuthRequest) -> Identity | AuthFailure | None:
        return self.check(request)

    def check(self, request: AuthRequest) -> Identity | AuthFailure | None:
        found = self._presented(request)
        if not found:
            return None
        if len(found) > 1:
            return bad_request("more than one API key in the request")
        key = found[0].strip()
        if not key or len(key) > MAX_KEY_BYTES:
            return AuthFailure(401, "invalid API key")
        digest = hashlib.sha256(key).digest()
        match: ApiKey | None = None
        for k in self._keys:  # no early exit: every digest is compared
            if hmac.compare_digest(digest, k.key_sha256):
                match = k
        if match is None:
            return AuthFailure(401, "invalid API key")
        return Identity(f"apikey:{match.name}", match.roles, self.name, api_key=match.name,
                        rate_limit=match.rate_limit)
