"""Problem details for HTTP APIs (RFC 9457): the one error body every HTTP answer of Loom uses.

A `Problem` is a value; `Problem.response()` renders it as `application/problem+json`. Extension
members go in `extra`; they may not shadow the standard members (RFC 9457 section 3.2 lets a
client rely on `type`, `title`, `status`, `detail` and `instance` meaning what the RFC says).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from loom.http.message import Response

__all__ = ["PROBLEM_CONTENT_TYPE", "Problem"]

PROBLEM_CONTENT_TYPE = "application/problem+json"
_STANDARD = frozenset({"type", "title", "status", "detail", "instance"})
# ensure_ascii: a detail that quotes client input can never put raw control bytes in a body.
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), sort_keys=False).encode


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem occurrence. `type` defaults to "about:blank", whose `title` is the status
    phrase (RFC 9457 section 4.2.1); give a URI of your own for a problem type with meaning."""

    status: int
    title: str = ""
    detail: str = ""
    type: str = "about:blank"
    instance: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"a problem has an error status (4xx or 5xx), not {self.status}")
        clash = _STANDARD.intersection(self.extra)
        if clash:
            raise ValueError(f"extension members may not shadow standard ones: {sorted(clash)}")

    def to_dict(self) -> dict[str, Any]:
        title = self.title or _phrase(self.status)
        doc: dict[str, Any] = {"type": self.type, "title": title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if self.instance:
            doc["instance"] = self.instance
        doc.update(self.extra)
        return doc

    def body(self) -> bytes:
        return _encode(self.to_dict()).encode("ascii")

    def response(self, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """The problem as a response; `headers` are added (e.g. Retry-After, WWW-Authenticate)."""
        return Response(self.status, [("content-type", PROBLEM_CONTENT_TYPE), *headers],
                        self.body())


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Error" if status < 500 else "Server Error"
