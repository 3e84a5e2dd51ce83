"""Attribute conditions on a grant (ABAC): who the caller is beyond its roles, and when and
from where it asks. A pure module: no clock, no sockets; the caller of `Policy.check` passes
an `Env` built once per decision (loom/node/dispatcher.py builds it from the node's clock).

A grant's `when` table (every entry must hold; a list holds when any of its items does):

    when = {"attr.region" = ["eu"],           # gateway-asserted (X-Auth-Attrs)
            "cert.O" = ["Acme"],              # client-certificate subject field
            "spiffe.path" = ["client/*"],     # <role>/<name> of the SPIFFE ID, a glob
            time = "08:00-18:00",             # local time, [start, end); may wrap midnight
            days = ["mon", "tue"],            # local day of week
            source = ["10.0.0.0/8"]}          # the connection's source address

Time and days are read in the policy's `timezone` (an IANA name, zoneinfo; default "UTC").
Attribute values are matched with the globs of loom/wire/glob.py. An attribute the caller does
not have fails its condition (never "matches nothing, so allowed"). Everything is checked when
the policy is set: an unknown attribute, a bad time window, a bad day or a bad CIDR is refused
with a message naming it.

Gateway-asserted attributes (`X-Auth-Attrs: region=eu,tier=gold`): at most MAX_ATTRS pairs,
names [a-z][a-z0-9_]{0,31}, values 1..MAX_VALUE printable characters without ',', '=' or
surrounding space, each name once. They are trusted only from a configured gateway
(loom/security/gateway.py refuses them from anyone else, as it refuses X-Auth-Roles).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loom.wire.errors import BadRequest, TooLarge
from loom.wire.glob import Glob, GlobError

__all__ = ["CERT_FIELDS", "ConditionError", "Conditions", "Env", "parse_attrs",
           "parse_conditions", "parse_timezone"]

MAX_ATTRS = 16
MAX_VALUE = 128
MAX_VALUES = 64
ATTR_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Subject fields a certificate condition may name (loom/security/identity.py extracts them).
CERT_FIELDS = frozenset({"CN", "O", "OU", "C", "ST", "L"})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")
_SPECIAL = frozenset({"time", "days", "source"})


class ConditionError(ValueError):
    """A `when` table is invalid; the message names the offending entry."""


@dataclass(frozen=True, slots=True)
class Env:
    """What a decision may look at besides roles and the request."""

    attrs: Mapping[str, str] = field(default_factory=dict)  # gateway-asserted
    cert: Mapping[str, str] = field(default_factory=dict)  # "O" -> "Acme", single-valued
    spiffe_path: str | None = None  # "client/alice"; None for guests and CN identities
    source: str | None = None  # the connection's source IP address
    now: datetime | None = None  # timezone-aware; None fails every time condition


@dataclass(frozen=True, slots=True)
class Conditions:
    values: tuple[tuple[str, tuple[Glob, ...]], ...] = ()  # ("attr.region", globs)
    window: tuple[time, time] | None = None  # [start, end), wraps when end <= start
    days: frozenset[int] | None = None  # datetime.weekday()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    source_text: Mapping[str, Any] = field(default_factory=dict)  # as given, for to_config

    def failed(self, env: Env, tz: ZoneInfo) -> str | None:
        """The first condition that does not hold, named as in the policy; None if all do."""
        for name, globs in self.values:
            have = _attribute(env, name)
            if have is None:
                return f"{name}: the caller has no such attribute"
            if not any(g.match(have) for g in globs):
                return f"{name}: {have!r} matches none of the allowed values"
        if self.window is not None or self.days is not None:
            if env.now is None:
                return "time: no clock for this decision"
            local = env.now.astimezone(tz)
            if self.days is not None and local.weekday() not in self.days:
                return f"days: {DAYS[local.weekday()]} is not allowed"
            if self.window is not None and not _in_window(local.time(), *self.window):
                return (f"time: {local:%H:%M} is outside {self.source_text['time']} "
                        f"({tz.key})")
        if self.networks is not None:
            if env.source is None:
                return "source: the request has no source address"
            try:
                addr = ipaddress.ip_address(env.source)
            except ValueError:
                return f"source: {env.source!r} is not an IP address"
            if not any(addr in n for n in self.networks):
                return f"source: {env.source} is in none of the allowed networks"
        return None


def _attribute(env: Env, name: str) -> str | None:
    if name == "spiffe.path":
        return env.spiffe_path
    kind, _, key = name.partition(".")
    return env.attrs.get(key) if kind == "attr" else env.cert.get(key)


def _in_window(t: time, start: time, end: time) -> bool:
    if start < end:
        return start <= t < end
    return t >= start or t < end  # wraps midnight (end == start: all day)


def _values(v: Any, where: str) -> tuple[Glob, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not v or len(v) > MAX_VALUES:
        raise ConditionError(f"{where}: must be a string or a list of 1..{MAX_VALUES} strings")
    out = []
    for i, p in enumerate(v):
        if not isinstance(p, str):
            raise ConditionError(f"{where}[{i}]: must be a string")
        try:
            out.append(Glob.compile(p))
        except GlobError as e:
            raise ConditionError(f"{where}[{i}]: {e.message}") from e
    return tuple(out)


def _window(v: Any, where: str) -> tuple[time, time]:
    m = _TIME_RE.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise ConditionError(f"{where}: a time window is \"HH:MM-HH:MM\" (24-hour, end may be "
                             "24:00), not " + repr(v))
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h2 == 24 and m2 != 0:
        raise ConditionError(f"{where}: {v!r}: 24:00 is the latest end")
    start, end = time(h1, m1), time(0, 0) if h2 == 24 else time(h2, m2)
    if start == end and h2 != 24 and not (h1 == 0 and m1 == 0):
        raise ConditionError(f"{where}: {v!r} is an empty window")
    return start, end


def parse_conditions(d: Any, where: str) -> Conditions:
    if not isinstance(d, Mapping) or not d:
        raise ConditionError(f"{where}: must be a non-empty table")
    values: list[tuple[str, tuple[Glob, ...]]] = []
    window = days = networks = None
    for name in sorted(d, key=str):
        v, w = d[name], f"{where}.{name}"
        if name == "time":
            window = _window(v, w)
        elif name == "days":
            if not isinstance(v, list | tuple) or not v or any(x not in DAYS for x in v):
                raise ConditionError(f"{w}: a non-empty list of {', '.join(DAYS)}")
            days = frozenset(DAYS.index(x) for x in v)
        elif name == "source":
            if not isinstance(v, list | tuple) or not v or len(v) > MAX_VALUES:
                raise ConditionError(f"{w}: a list of 1..{MAX_VALUES} CIDR networks")
            nets = []
            for i, c in enumerate(v):
                try:
                    nets.append(ipaddress.ip_network(c, strict=True))
                except (ValueError, TypeError) as e:
                    raise ConditionError(f"{w}[{i}]: bad CIDR {c!r}: {e}") from None
            networks = tuple(nets)
        elif isinstance(name, str) and _known_attribute(name):
            values.append((name, _values(v, w)))
        else:
            raise ConditionError(
                f"{where}: unknown attribute {name!r} (attr.<name>, cert.<"
                f"{'|'.join(sorted(CERT_FIELDS))}>, spiffe.path, time, days, source)")
    return Conditions(tuple(values), window, days, networks, dict(d))


def _known_attribute(name: str) -> bool:
    if name == "spiffe.path":
        return True
    kind, _, key = name.partition(".")
    if kind == "attr":
        return ATTR_NAME_RE.fullmatch(key) is not None
    return kind == "cert" and key in CERT_FIELDS


def parse_timezone(v: Any) -> ZoneInfo:
    if not isinstance(v, str) or not v or len(v) > 64:
        raise ConditionError("acl.timezone: an IANA time zone name such as \"Europe/Paris\"")
    try:
        return ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConditionError(f"acl.timezone: unknown time zone {v!r}") from None


def parse_attrs(value: str, header: str = "X-Auth-Attrs") -> dict[str, str]:
    """A gateway's `name=value,name=value`, strictly: any irregularity is refused."""
    items = value.split(",")
    if len(items) > MAX_ATTRS:
        raise TooLarge(f"{header}: at most {MAX_ATTRS} attributes")
    out: dict[str, str] = {}
    for item in items:
        name, eq, val = item.strip().partition("=")
        if not eq:
            raise BadRequest(f"{header}: {item.strip()!r} is not name=value")
        if not ATTR_NAME_RE.fullmatch(name):
            raise BadRequest(f"{header}: attribute names are [a-z][a-z0-9_]{{0,31}}")
        if name in out:
            raise BadRequest(f"{header}: attribute {name} given more than once")
        if not (1 <= len(val) <= MAX_VALUE) or val != val.strip() or "=" in val \
                or not val.isprintable():
            raise BadRequest(f"{header}: attribute {name}: a value is 1..{MAX_VALUE} printable "
                             "characters without '=' or surrounding spaces")
        out[name] = val
    return out
