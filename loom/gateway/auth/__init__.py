"""Authentication methods of the gateway, one module each, behind one interface (`base`).

`build(config, fetch)` makes every enabled method, in the configuration's order, and the
`Chain` that applies them per route (docs/gateway.md, "Authentication").
"""

from __future__ import annotations

from loom.gateway.auth.api_key import ApiKeyAuthenticator
from loom.gateway.auth.base import Authenticator, AuthFailure, AuthRequest, Identity
from loom.gateway.auth.basic import BasicAuthenticator
from loom.gateway.auth.chain import GUEST, Chain
from loom.gateway.auth.fetch import Fetch, FetchError, HTTPSFetcher, provider_context
from loom.gateway.auth.introspection import IntrospectionAuthenticator
from loom.gateway.auth.jwt import JwtAuthenticator
from loom.gateway.auth.mtls import MtlsAuthenticator
from loom.gateway.auth.plugins import load_custom
from loom.gateway.config import ClientCertHeaders, ConfigError, GatewayConfig

__all__ = [
    "GUEST",
    "AuthFailure",
    "AuthRequest",
    "Authenticator",
    "Chain",
    "Fetch",
    "FetchError",
    "HTTPSFetcher",
    "Identity",
    "build",
    "provider_context",
]


def build(config: GatewayConfig, fetch: Fetch | None, *,
          cert_headers: ClientCertHeaders | None = None) -> Chain:
    """Every enabled method and the chain over them. `fetch` reaches the identity provider
    (JWKS, discovery, introspection); it may be None when no method needs it."""
    auth = config.auth
    methods: dict[str, Authenticator] = {}
    if auth.jwt.enabled:
        methods["jwt"] = JwtAuthenticator(auth.jwt, fetch)
    if auth.oauth.enabled:
        if fetch is None:
            raise ConfigError("middleware.auth.oauth", "introspection needs HTTPS")
        methods["oauth"] = IntrospectionAuthenticator(auth.oauth, fetch)
    if auth.api_key.enabled:
        methods["api_key"] = ApiKeyAuthenticator(auth.api_key)
    if auth.basic.enabled:
        methods["basic"] = BasicAuthenticator(auth.basic)
    if auth.mtls.enabled:
        methods["mtls"] = MtlsAuthenticator(auth.mtls, cert_headers or ClientCertHeaders())
    for name, options in auth.custom.items():
        methods[name] = load_custom(name, options)
    return Chain(auth, methods)
