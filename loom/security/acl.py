"""The ACL policy: roles grant message types, optionally narrowed to structures and keys.

Config shape (the parsed `[acl]` table; docs/security.md has the full example):

    guest_roles = ["guest"]
    timezone = "UTC"  # for `when.time` / `when.days` (an IANA name)
    [roles.<role>]   grants = [{types = [...], structures = [...], keys = [...], when = {...}}]
    [principals]     "<spiffe principal>" = ["<role>", ...]
    [users]          "<gateway-asserted user>" = ["<role>", ...]

Type selectors: an exact NAME ("MAP_PUT"), "category:<CATEGORY>", "class:read|write|admin", "*".
Structure and key scopes are globs of loom/wire/glob.py, the dialect MAP_SCAN uses.
`when` holds attribute conditions (loom/security/attrs.py owns their syntax and evaluation).

Decision rules (in this order; the tests in tests/security/test_acl.py pin each one):
1. Peer-plane types (RAFT category or the peer listener) are never allowed here, whatever the
   grants say: not even "*" reaches them.
2. PUBLIC types (HELLO, PING, WHOAMI) are always allowed.
3. Otherwise default deny; the first grant of any of the caller's roles that covers the type AND
   whose scopes hold allows it.
   - A `structures` scope holds only for a request that names a structure matching a pattern.
   - A `when` table holds only if every condition in it holds for the decision's `Env`
     (caller attributes, source address, the deciding node's clock). A grant that covers the
     type and whose scopes hold but whose conditions fail does not allow; if no other grant
     does, the denial names that grant and the failed condition (rule "<grant> when").
   - A `keys` scope holds only if the request touches at least one key and EVERY key touched
     (loom.wire.catalog.keys_touched, the same function execution uses) matches a pattern.
     So a key-scoped grant never allows a whole-structure request (MAP_KEYS, MAP_SCAN,
     MAP_CLEAR, MAP_SIZE, ...): those need a grant without a key scope.
4. check_request adds the secondary paths: BATCH_EXECUTE needs a grant of its own AND every
   inner op must be allowed as if sent alone (one forbidden op denies the batch, and the
   decision names it: `Decision.member`), as an etcd Txn needs the permissions of every
   operation in it; and a reply that reveals data (Reveal) requires the read grant for the
   same structure and keys, else the request is denied or, for redact reveals, allowed with
   the revealing part of the reply withheld.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from loom.security.attrs import (
    ConditionError,
    Conditions,
    Env,
    parse_conditions,
    parse_timezone,
)
from loom.security.identity import GUEST_PRINCIPAL
from loom.wire.catalog import (
    BY_NAME,
    Access,
    Category,
    Listener,
    MessageType,
    keys_touched,
)
from loom.wire.glob import Glob, GlobError

__all__ = ["USER_PREFIX", "Decision", "Env", "Grant", "Member", "Policy", "PolicyError",
           "valid_user_name"]

ROLE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
USER_PREFIX = "user:"
MAX_PATTERNS = 64
MAX_GRANTS = 256
MAX_ROLES = 1024
MAX_USER = 128
_CLASSES = {"read": Access.READ, "write": Access.WRITE, "admin": Access.ADMIN}
_TOP = frozenset({"guest_roles", "roles", "principals", "users", "timezone"})
_GRANT = frozenset({"types", "structures", "keys", "when"})
_UTC = ZoneInfo("UTC")
_NO_ENV = Env()


class PolicyError(ValueError):
    """The ACL config is invalid; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class Member:
    """The BATCH_EXECUTE member a denial is about, so that the error and the audit record can
    name it: its index in `ops`, its type, its structure and the (first) key refused."""

    index: int
    op: str
    structure: str | None
    key: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str  # "roles.<role>.grants[<i>]", "builtin:public", "default-deny", ...
    redact: bool = False  # allowed, but withhold the revealing part of the reply
    redact_ops: tuple[int, ...] = ()  # BATCH_EXECUTE: inner ops whose results are withheld
    member: Member | None = None  # BATCH_EXECUTE denied because of this member


def valid_user_name(name: object) -> bool:
    """Gateway-asserted user names: 1..128 printable characters, no surrounding whitespace."""
    return (
        isinstance(name, str) and 1 <= len(name) <= MAX_USER and name.isprintable()
        and name == name.strip()
    )


def _selector_ok(sel: str) -> bool:
    if sel == "*":
        return True
    if sel.startswith("category:"):
        cat = sel.removeprefix("category:")
        return cat in Category.__members__ and cat != Category.RAFT.value
    if sel.startswith("class:"):
        return sel.removeprefix("class:") in _CLASSES
    mt = BY_NAME.get(sel)
    return mt is not None and mt.listener is Listener.CLIENT


@dataclass(frozen=True, slots=True)
class Grant:
    types: tuple[str, ...]
    structures: tuple[Glob, ...] | None = None
    keys: tuple[Glob, ...] | None = None
    when: Conditions | None = None

    def covers(self, mt: MessageType) -> bool:
        for sel in self.types:
            if sel in ("*", mt.name, f"category:{mt.category.value}"):
                return True
            if sel.startswith("class:") and _CLASSES.get(sel[6:]) is mt.access:
                return True
        return False

    def scope_holds(self, structure: str | None, keys: Sequence[str]) -> bool:
        if self.structures is not None and (
            structure is None or not any(g.match(structure) for g in self.structures)
        ):
            return False
        if self.keys is not None:
            if not keys:  # whole-structure or keyless request: never by a key-scoped grant
                return False
            pats = self.keys
            if not all(any(g.match(k) for g in pats) for k in keys):
                return False
        return True

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"types": list(self.types)}
        if self.structures is not None:
            out["structures"] = [g.pattern for g in self.structures]
        if self.keys is not None:
            out["keys"] = [g.pattern for g in self.keys]
        if self.when is not None:
            out["when"] = dict(self.when.source_text)
        return out


def _str_list(v: Any, where: str, *, max_items: int, allow_empty: bool = False) -> list[str]:
    if not isinstance(v, list | tuple):
        raise PolicyError(f"{where}: must be a list of strings")
    if not v and not allow_empty:
        raise PolicyError(f"{where}: must not be empty")
    if len(v) > max_items:
        raise PolicyError(f"{where}: at most {max_items} items")
    for i, s in enumerate(v):
        if not isinstance(s, str):
            raise PolicyError(f"{where}[{i}]: must be a string")
    return list(v)


def _patterns(v: Any, where: str) -> tuple[Glob, ...]:
    out = []
    for i, p in enumerate(_str_list(v, where, max_items=MAX_PATTERNS)):
        try:
            out.append(Glob.compile(p))
        except GlobError as e:
            raise PolicyError(f"{where}[{i}]: {e.message}") from e
    return tuple(out)


def _grant(d: Any, where: str) -> Grant:
    if not isinstance(d, Mapping):
        raise PolicyError(f"{where}: a grant must be a table")
    unknown = sorted(set(d) - _GRANT, key=str)
    if unknown:
        raise PolicyError(f"{where}: unknown field {unknown[0]!r} (allowed: types, structures, "
                          "keys, when)")
    if "types" not in d:
        raise PolicyError(f"{where}: missing 'types'")
    types = _str_list(d["types"], f"{where}.types", max_items=MAX_PATTERNS)
    for i, sel in enumerate(types):
        if not _selector_ok(sel):
            raise PolicyError(
                f"{where}.types[{i}]: unknown type selector {sel!r} (a client message type "
                "NAME, category:<CATEGORY> except RAFT, class:read|write|admin, or *)"
            )
    structures = _patterns(d["structures"], f"{where}.structures") if "structures" in d else None
    keys = _patterns(d["keys"], f"{where}.keys") if "keys" in d else None
    # A scope on an exact type that can never satisfy it would be a silently dead grant.
    for i, sel in enumerate(types):
        mt = BY_NAME.get(sel)
        if mt is None:
            continue
        if keys is not None and mt.key_field is None and mt.keys_field is None:
            raise PolicyError(f"{where}.types[{i}]: {sel} touches no keys; a grant with "
                              "'keys' can never allow it")
        if structures is not None and not mt.has_structure:
            raise PolicyError(f"{where}.types[{i}]: {sel} names no structure; a grant with "
                              "'structures' can never allow it")
    try:
        when = parse_conditions(d["when"], f"{where}.when") if "when" in d else None
    except ConditionError as e:
        raise PolicyError(str(e)) from None
    return Grant(tuple(types), structures, keys, when)


def _role_refs(v: Any, where: str, roles: Mapping[str, object]) -> tuple[str, ...]:
    names = _str_list(v, where, max_items=MAX_ROLES, allow_empty=True)
    for i, r in enumerate(names):
        if r not in roles:
            raise PolicyError(f"{where}[{i}]: unknown role {r!r}")
    return tuple(dict.fromkeys(names))


def _table(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = d.get(key, {})
    if not isinstance(v, Mapping):
        raise PolicyError(f"acl.{key}: must be a table")
    return v


@dataclass(frozen=True, eq=True)
class Policy:
    roles: Mapping[str, tuple[Grant, ...]]
    guest_roles: tuple[str, ...] = ()
    principals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    timezone: ZoneInfo = _UTC

    # -- config --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, d: Any) -> Policy:
        if not isinstance(d, Mapping):
            raise PolicyError("acl: must be a table")
        unknown = sorted(set(d) - _TOP, key=str)
        if unknown:
            raise PolicyError(f"acl: unknown key {unknown[0]!r} (allowed: "
                              f"{', '.join(sorted(_TOP))})")
        roles: dict[str, tuple[Grant, ...]] = {}
        rt = _table(d, "roles")
        if len(rt) > MAX_ROLES:
            raise PolicyError(f"acl.roles: at most {MAX_ROLES} roles")
        for name, body in rt.items():
            where = f"acl.roles.{name}"
            if not isinstance(name, str) or not ROLE_RE.fullmatch(name):
                raise PolicyError(f"{where}: role names are [A-Za-z0-9._-]{{1,64}}")
            if not isinstance(body, Mapping):
                raise PolicyError(f"{where}: must be a table")
            extra = sorted(set(body) - {"grants"}, key=str)
            if extra:
                raise PolicyError(f"{where}: unknown key {extra[0]!r} (allowed: grants)")
            gl = body.get("grants", [])
            if not isinstance(gl, list | tuple) or len(gl) > MAX_GRANTS:
                raise PolicyError(f"{where}.grants: must be a list of at most {MAX_GRANTS}")
            roles[name] = tuple(_grant(g, f"{where}.grants[{i}]") for i, g in enumerate(gl))
        guest = _role_refs(d.get("guest_roles", []), "acl.guest_roles", roles)
        principals: dict[str, tuple[str, ...]] = {}
        for p, rs in _table(d, "principals").items():
            if not isinstance(p, str) or not p.startswith("spiffe://") or len(p) > 512 \
                    or not p.isprintable():
                raise PolicyError(f"acl.principals.{p!r}: principals are spiffe:// URIs "
                                  "(guests use guest_roles, gateway users use acl.users)")
            principals[p] = _role_refs(rs, f"acl.principals.{p}", roles)
        users: dict[str, tuple[str, ...]] = {}
        for u, rs in _table(d, "users").items():
            if not valid_user_name(u):
                raise PolicyError(f"acl.users.{u!r}: user names are 1..{MAX_USER} printable "
                                  "characters without surrounding spaces")
            users[u] = _role_refs(rs, f"acl.users.{u}", roles)
        try:
            tz = parse_timezone(d["timezone"]) if "timezone" in d else _UTC
        except ConditionError as e:
            raise PolicyError(str(e)) from None
        return cls(roles, guest, principals, users, tz)

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "guest_roles": list(self.guest_roles),
            "roles": {r: {"grants": [g.to_config() for g in gs]} for r, gs in self.roles.items()},
            "principals": {p: list(rs) for p, rs in self.principals.items()},
            "users": {u: list(rs) for u, rs in self.users.items()},
        }
        if self.timezone.key != "UTC":
            out["timezone"] = self.timezone.key
        return out

    # -- lookups -------------------------------------------------------------------------------
    @property
    def known_roles(self) -> frozenset[str]:
        return frozenset(self.roles)

    def roles_for(self, principal: str) -> tuple[str, ...]:
        if principal == GUEST_PRINCIPAL:
            return self.guest_roles
        if principal.startswith(USER_PREFIX):
            return self.users.get(principal.removeprefix(USER_PREFIX), ())
        return self.principals.get(principal, ())

    # -- decisions -----------------------------------------------------------------------------
    def check(
        self, roles: Sequence[str], mt: MessageType, structure: str | None, keys: Sequence[str],
        env: Env = _NO_ENV,
    ) -> Decision:
        if mt.listener is not Listener.CLIENT or mt.category is Category.RAFT:
            return Decision(False, f"{mt.name} is a peer-plane type, never allowed to clients",
                            "builtin:peer-plane")
        if mt.access is Access.PUBLIC:
            return Decision(True, f"{mt.name} is public", "builtin:public")
        unmet: tuple[str, str] | None = None  # the first grant only its conditions kept back
        for role in roles:
            for i, g in enumerate(self.roles.get(role, ())):
                if g.covers(mt) and g.scope_holds(structure, keys):
                    rule = f"roles.{role}.grants[{i}]"
                    failed = g.when.failed(env, self.timezone) if g.when is not None else None
                    if failed is None:
                        return Decision(True, f"{mt.name} granted to role {role!r}", rule)
                    if unmet is None:
                        unmet = (rule, failed)
        if unmet is not None:
            return Decision(False, f"{mt.name}: {unmet[0]} applies but its condition failed: "
                            f"{unmet[1]}", f"{unmet[0]} when")
        what = f"{mt.name}" + (f" on {structure!r}" if structure is not None else "")
        if keys:
            what += f" ({len(keys)} key{'s' if len(keys) != 1 else ''})"
        shown = ", ".join(r for r in roles if r in self.roles) or "none"
        return Decision(False, f"no grant allows {what} for roles [{shown}]", "default-deny")

    def check_request(
        self, roles: Sequence[str], mt: MessageType, body: Mapping[str, Any],
        env: Env = _NO_ENV,
    ) -> Decision:
        """Authorize a validated request, including batch members and revealing replies."""
        try:
            if "ops" in mt.schema and mt.listener is Listener.CLIENT and mt.name == "BATCH_EXECUTE":
                # The container needs its own grant, and then every inner op needs its own.
                outer = self.check(roles, mt, None, [], env)
                return outer if not outer.allowed else self._check_batch(roles, body, env)
            structure = body.get("name") if mt.has_structure else None
            keys = keys_touched(mt, body)
        except (KeyError, TypeError, AttributeError):
            return Decision(False, f"{mt.name}: malformed request body", "malformed")
        d = self.check(roles, mt, structure, keys, env)
        rv = mt.reveal
        if not d.allowed or rv is None or (rv.flag is not None and body.get(rv.flag) is not True):
            return d
        read = BY_NAME[rv.read_op]
        if self.check(roles, read, structure, keys, env).allowed:
            return d
        if rv.redact:
            return Decision(True, f"{d.reason}; reply withheld without {read.name}", d.rule,
                            redact=True)
        return Decision(False, f"the reply to {mt.name} reveals data that needs {read.name}, "
                        "which is not granted", "reveal")

    def _check_batch(self, roles: Sequence[str], body: Mapping[str, Any], env: Env
                     ) -> Decision:
        ops = body["ops"]
        if not isinstance(ops, list) or not ops:
            return Decision(False, "BATCH_EXECUTE: no operations", "malformed")
        redact: list[int] = []
        for i, op in enumerate(ops):
            inner = BY_NAME.get(op["op"]) if isinstance(op, Mapping) else None
            # Nested batches are refused by validation; refuse them here too.
            if inner is None or inner.name == "BATCH_EXECUTE" or not isinstance(op["b"], Mapping):
                return Decision(False, f"BATCH_EXECUTE.ops[{i}]: not a batchable operation",
                                "malformed")
            d = self.check_request(roles, inner, op["b"], env)
            if not d.allowed:
                return Decision(False, f"BATCH_EXECUTE.ops[{i}]: {d.reason}", d.rule,
                                member=self._member(roles, i, inner, op["b"], env))
            if d.redact:
                redact.append(i)
        return Decision(True, f"all {len(ops)} batch operations allowed", "batch",
                        redact_ops=tuple(redact))

    def _member(self, roles: Sequence[str], i: int, mt: MessageType,
                body: Mapping[str, Any], env: Env) -> Member:
        """Name a denied batch member: the first of its keys refused on its own (every key is
        when the type itself is not granted), else its first key."""
        s = body.get("name") if mt.has_structure else None
        structure = s if isinstance(s, str) else None
        try:
            keys = keys_touched(mt, body)
        except (KeyError, TypeError, AttributeError):
            keys = []
        refused = next((k for k in keys if not self.check(roles, mt, structure, [k], env).allowed),
                       keys[0] if keys else None)
        return Member(i, mt.name, structure, refused)

