"""Every failed authentication on a listener: counted, and audited without flooding the log.

The client, HTTP and peer listeners call `failed(listener, remote, exc)` where a TLS handshake
or the certificate check after it fails, and `succeeded(listener)` where one passes. The reason
comes from `security/handshake.py` `classify` (one rule for all three listeners), the counters
feed `loom_tls_handshakes_total` and `loom_tls_handshake_failures_total`, and the audit records
come from its `FailureWindows` (first failure of a (reason, listener, source) at once, the rest
as one record with the count when the window ends).

Never blocking a listener: `failed` is synchronous and emits with `AuditLog.emit`, which never
waits (a full lane drops and counts); `run` closes ended windows once a second.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import trio

from loom.node.audit import AuditLog
from loom.security.handshake import FailureWindows, classify

__all__ = ["Handshakes"]

log = logging.getLogger("loom.node.handshakes")
LISTENERS = ("client", "http", "peer")


def source_of(remote: str) -> str:
    """The host of "host:port" (or "host:port#conn"): one client reconnecting from new ports
    is one source."""
    host = remote.split("#", 1)[0]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Handshakes:
    def __init__(self, audit: AuditLog, *, window_s: float = 10.0,
                 max_groups: int = 1024) -> None:
        self._audit = audit
        self.windows = FailureWindows(window_s, max_groups)
        self.ok: Counter[str] = Counter()
        self.failures: Counter[tuple[str, str]] = Counter()

    def succeeded(self, listener: str) -> None:
        self.ok[listener] += 1

    def failed(self, listener: str, remote: str, exc: BaseException | str,
               reason: str | None = None) -> str:
        """One failure; `exc` is what was raised, or a reason from REASONS already known
        ("not_a_member"), or with `reason` given, the text explaining it. `reason` overrides
        the classification (a deny-list refusal raised as an identity error is "revoked").
        Returns the reason."""
        if isinstance(exc, str):
            detail = exc if reason is not None else ""
            reason = reason or exc
        else:
            detail = str(exc.__cause__ or exc)
            reason = reason or classify(exc)
        self.failures[(reason, listener)] += 1
        # Debug only: a flood must not flood the operational log either; the audit records
        # (aggregated) and the counter are where failures show.
        log.debug("%s listener: authentication of %s failed: %s %s", listener, remote, reason,
                  detail)
        for rec in self.windows.failed(reason, listener, source_of(remote),
                                       trio.current_time(), detail):
            self._audit.emit(rec, priority=True)
        return reason

    def flush(self) -> None:
        for rec in self.windows.flush():
            self._audit.emit(rec, priority=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Close ended windows, once a second, until cancelled."""
        task_status.started()
        period = min(1.0, self.windows.window_s)
        while True:
            await trio.sleep(period)
            for rec in self.windows.due(trio.current_time()):
                self._audit.emit(rec, priority=True)

    def statistics(self) -> dict[str, Any]:
        """NODE_STATS "tls": handshakes passed by listener, failures by "reason/listener"."""
        w = self.windows.statistics()
        return {"handshakes": dict(self.ok),
                "failures": {f"{r}/{lst}": n for (r, lst), n in self.failures.items()},
                "audit_records": w.records, "open_windows": w.open_groups,
                "overflowed": w.overflowed}
