"""Settings both clients (blocking and trio) share, set up in one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from loom.client import protocol as p
from loom.client.tls import make_context


class ClientSettings:
    """Mixin: endpoints, TLS, identity, timeouts, retry policy and the write window."""

    def _init_settings(
        self, endpoints: str | Sequence[str], *, ca: str | Path, cert: str | Path | None,
        key: str | Path | None, client_name: str, timeout: float,
        headers: Mapping[str, str] | None, retry: p.RetryPolicy | None,
        server_hostname: str | None, check_hostname: bool, client_id: str | None,
        resend_unknown_writes: bool, max_writes_in_flight: int, connect_timeout: float,
    ) -> None:
        self.endpoints = p.parse_endpoints(
            endpoints if isinstance(endpoints, str) else list(endpoints))
        self.timeout = timeout
        self.client_name = client_name
        self.client_id = client_id or p.new_client_id()
        self.headers = dict(headers or {})
        self.retry = retry or p.RetryPolicy()
        self.resend_unknown_writes = resend_unknown_writes
        self._ctx = make_context(ca, cert, key, check_hostname=check_hostname)
        self._sent_cert = cert is not None
        self._server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self._window = p.WriteWindow(max_writes_in_flight)
