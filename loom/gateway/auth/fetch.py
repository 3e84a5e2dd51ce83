"""Outbound HTTPS for the identity layer (JWKS, discovery, introspection) on loom/http's
pooled client, with a deadline and a size bound on every call.

`Fetch` is the narrow interface the caches use: `await fetch(method, url, headers, body)`
returns (status, body) or raises `FetchError`. Tests and embedders may pass their own.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import h11
import trio

from loom.http import ClientLimits, HTTPClient
from loom.http.client import PoolFull, ResponseTooLarge

__all__ = ["Fetch", "FetchError", "HTTPSFetcher", "provider_context"]

Fetch = Callable[[str, str, Sequence[tuple[str, str]], bytes], Awaitable[tuple[int, bytes]]]


class FetchError(Exception):
    """The identity provider could not be reached or answered nonsense."""


def provider_context(ca_file: Path | None) -> ssl.SSLContext:
    """TLS for the identity provider: its certificate verified against `ca_file`, or the
    system's trust store (a public provider), with the host name checked. TLS 1.2 is the
    floor here, not 1.3 as on Loom's own links: the provider is not ours to configure."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class HTTPSFetcher:
    def __init__(self, ssl_context: ssl.SSLContext, *, timeout_s: float = 5.0,
                 max_response_bytes: int = 256 * 1024) -> None:
        self.timeout_s = timeout_s
        self.client = HTTPClient(ssl_context, limits=ClientLimits(
            max_response_bytes=max_response_bytes, max_connections_per_origin=4,
            max_origins=16))

    async def __call__(self, method: str, url: str, headers: Sequence[tuple[str, str]],
                       body: bytes) -> tuple[int, bytes]:
        try:
            with trio.fail_after(self.timeout_s):
                r = await self.client.request(method, url, headers=list(headers), body=body)
        except (trio.TooSlowError, OSError, trio.BrokenResourceError, h11.ProtocolError,
                ResponseTooLarge, PoolFull, ValueError) as e:
            raise FetchError(f"{method} {url}: {type(e).__name__}") from None
        return r.status, r.body

    async def aclose(self) -> None:
        await self.client.aclose()
