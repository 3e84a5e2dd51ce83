"""Why a connection failed to authenticate, and how a flood of such failures is audited.

One place for every listener (client, HTTP, peer): `classify` turns what the TLS layer or the
identity check raised into one reason from `REASONS`, and `FailureWindows` decides which audit
records a stream of failures produces. Both are pure: no clock (the caller passes `now`), no
sockets, no event loop; `node/handshakes.py` is the shell that feeds them and emits the records.

Aggregation, the rule: failures are grouped by (reason, listener, source host). The first
failure of a group is audited at once (count 1), so a single bad client is visible
immediately. Further failures of the group within `window_s` of that first one are only
counted; when the window ends (`due`), one record carries how many there were. A flood of
10,000 expired-certificate handshakes from one host over a window is therefore two records,
not 10,000. The number of open groups is bounded (`max_groups`): past it, new sources are
grouped under the source "*" for their (reason, listener), whose number is bounded by
`REASONS` x listeners, so memory stays bounded whatever the flood's addresses are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loom.security.identity import IdentityError

__all__ = ["REASONS", "FailureWindows", "WindowStatistics", "classify", "revocation_reason"]

REASONS = (
    "no_certificate",  # the client sent none where one is required
    "unknown_ca",  # the chain does not lead to our CA (another CA, self-signed)
    "expired",
    "not_yet_valid",
    "revoked",  # listed in the CRL the node reads
    "bad_certificate",  # any other verification failure (bad signature, purpose, ...)
    "wrong_role",  # verified, but not a certificate for this listener (a client on the peer port)
    "not_a_member",  # a node certificate of a node that is not a member
    "protocol",  # plaintext, TLS <= 1.2, garbage: not TLS 1.3
    "timeout",  # the handshake did not finish within handshake_timeout_s
    "closed",  # the other side went away during the handshake
)

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) as `SSLCertVerificationError.verify_code` has them.
_VERIFY_CODES = {
    2: "unknown_ca",  # unable to get issuer certificate
    9: "not_yet_valid",  # certificate is not yet valid
    10: "expired",  # certificate has expired
    18: "unknown_ca",  # self-signed certificate
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
    23: "revoked",  # certificate revoked
}
# `SSLError.reason` (OpenSSL's reason string) for failures that are not a certificate's.
_SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_certificate",
    "CERTIFICATE_REQUIRED": "no_certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_certificate",
    "UNSUPPORTED_PROTOCOL": "protocol",
    "NO_PROTOCOLS_AVAILABLE": "protocol",
    "WRONG_VERSION_NUMBER": "protocol",
    "HTTP_REQUEST": "protocol",
    "HTTPS_PROXY_REQUEST": "protocol",
    "VERSION_TOO_LOW": "protocol",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
}


def classify(exc: BaseException) -> str:
    """The reason (one of `REASONS`) a handshake or the identity check after it failed.

    `exc` is what the listener caught: an `ssl.SSLError` (directly or as the `__cause__` of the
    stream's `BrokenResourceError`), an `IdentityError` from the certificate check, an OSError
    (reset during the handshake), or a timeout (any exception named like one: the event loop's
    own `TooSlowError` is not imported here)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:  # the cause chain, bounded
        # ssl.SSLCertVerificationError and ssl.SSLError, read by their attributes: this
        # module stays free of the ssl module (a pure package; tests/test_layers.py).
        code = getattr(e, "verify_code", None)
        if isinstance(code, int):
            return _VERIFY_CODES.get(code, "bad_certificate")
        if isinstance(e, OSError) and hasattr(e, "library") and hasattr(e, "reason"):
            reason = getattr(e, "reason", None) or ""
            if reason in _SSL_REASONS:
                return _SSL_REASONS[reason]
            return "bad_certificate" if "CERTIFICATE" in reason else "protocol"
        if isinstance(e, IdentityError):
            return "wrong_role"
        if isinstance(e, TimeoutError) or type(e).__name__ == "TooSlowError":
            return "timeout"
        e, seen = e.__cause__ or e.__context__, seen + 1
    return "closed"


def revocation_reason(why: str) -> str:
    """The reason for a certificate the node's own revocation check refused after the handshake
    (`security/revocation.py` `Revocation.reason`: the deny list, the CRL, expiry)."""
    return "expired" if why == "certificate expired" else "revoked"


@dataclass(frozen=True, slots=True)
class WindowStatistics:
    failures: int  # every failure seen
    records: int  # audit records produced for them
    open_groups: int  # groups with a window running now
    overflowed: int  # failures grouped under source "*" because max_groups was reached


@dataclass(slots=True)
class _Group:
    start: float
    suppressed: int = 0


class FailureWindows:
    """Turns failures into audit records, aggregated per (reason, listener, source) over
    `window_s` (the module docstring has the rule). Records are plain dicts for the audit log;
    `failed` and `due` return the ones to emit now."""

    def __init__(self, window_s: float = 10.0, max_groups: int = 1024) -> None:
        if window_s <= 0 or max_groups < 1:
            raise ValueError("window_s must be > 0 and max_groups >= 1")
        self.window_s = window_s
        self.max_groups = max_groups
        self._groups: dict[tuple[str, str, str], _Group] = {}
        self._failures = 0
        self._records = 0
        self._overflowed = 0

    def failed(self, reason: str, listener: str, source: str, now: float,
               detail: str = "") -> list[dict[str, Any]]:
        self._failures += 1
        out = self.due(now)
        key = (reason, listener, source)
        if key not in self._groups and len(self._groups) >= self.max_groups:
            self._overflowed += 1
            key = (reason, listener, "*")
        g = self._groups.get(key)
        if g is not None:
            g.suppressed += 1
            return out
        self._groups[key] = _Group(now)
        rec = self._record(key, 1, 0.0)
        if detail:
            rec["detail"] = detail[:200]
        out.append(rec)
        return out

    def due(self, now: float) -> list[dict[str, Any]]:
        """Close every window that has ended: one record each for the failures it counted
        after its first (none if there were none)."""
        out: list[dict[str, Any]] = []
        for key, g in list(self._groups.items()):
            if now - g.start >= self.window_s:
                del self._groups[key]
                if g.suppressed:
                    out.append(self._record(key, g.suppressed, now - g.start))
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Every open window's count, now (at shutdown)."""
        out = [self._record(k, g.suppressed, 0.0) for k, g in self._groups.items()
               if g.suppressed]
        self._groups.clear()
        return out

    def _record(self, key: tuple[str, str, str], count: int, window: float) -> dict[str, Any]:
        self._records += 1
        reason, listener, source = key
        rec: dict[str, Any] = {"event": "authentication_failed", "reason": reason,
                               "listener": listener, "remote": source, "count": count,
                               "result": "unauthenticated", "command": None}
        if window:
            rec["window_s"] = round(window, 3)
        return rec

    def statistics(self) -> WindowStatistics:
        return WindowStatistics(self._failures, self._records, len(self._groups),
                                self._overflowed)
