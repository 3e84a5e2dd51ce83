"""An example custom authentication method, loaded through the `loom.gateway.auth` entry-point
group: a shared token in a header, per user, from the method's options."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity


class SharedToken:
    def __init__(self, name: str, header: str, tokens: Mapping[str, str]) -> None:
        self.name = name
        self.challenge: str | None = f'SharedToken header="{header}"'
        self.header = header
        self.tokens = {user: token.encode() for user, token in tokens.items()}

    async def authenticate(self, request: AuthRequest) -> Identity | AuthFailure | None:
        values = request.header_values(self.header)
        if not values:
            return None
        for user, token in self.tokens.items():
            if len(values) == 1 and hmac.compare_digest(values[0], token):
                return Identity(f"{self.name}:{user}", ("plugin-role",), self.name)
        return AuthFailure(401, "invalid shared token", self.challenge)


def factory(name: str, options: Mapping[str, object]) -> SharedToken:
    header, tokens = options.get("header"), options.get("tokens")
    if not isinstance(header, str) or not isinstance(tokens, dict):
        raise ValueError("options need header and tokens")
    return SharedToken(name, header, tokens)
