"""The dispatcher: decode -> identify -> authorize -> execute -> audit, for one request.

It knows nothing of sockets or TLS: a transport (the client listener here, the HTTP listener
later) hands it a parsed `Request` and the connection's verified `Identity`, and gets back the
response map to send. The order of the checks is the security contract, and this file owns it:

 1. the opcode must be a known CLIENT-listener type (peer types are not even decodable here);
 2. the protocol version must be the one negotiated by HELLO;
 3. the caller is resolved from the certificate identity and, for gateways only, the asserted
    X-Auth-User / X-Auth-Roles (spoofing attempts are refused and audited);
 4. the body is validated against the catalog schema (wrong types never reach key extraction);
 5. the ACL decides, on every key the request touches, every inner operation of a batch and
    every read a reply would reveal — before anything executes or is proposed; a write carries
    the policy version it was decided under, and a write the state machine refused because the
    policy at its log position is another one is decided again under the policy now in force
    (`_redecide_write`), as a linearizable read served past a newer policy is
    (`_reauthorize_read`): no request is allowed on a policy older than its place in the log;
 6. execution, by the catalog's `execution` column and nothing else: local types answer here;
    log reads take the read path (ReadIndex, or the replica when stale) and append nothing;
    log writes are proposed; cluster administration goes to the Raft driver; a node task (a
    backup) to its handler. A request that cannot wait is handed over with a callback
    (`Replicator.submit`) and costs no task; a waiting type (timeout_ms), cluster
    administration or a node task runs in its caller's task;
 7. exactly one audit record for every write/admin outcome and every denial; and, in the same
    place, every answer counted in the node's metrics (type, listener, result, duration).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import trio

from loom.buildinfo import build_info
from loom.node.audit import AuditLog
from loom.node.replicator import Applied, Replicator
from loom.obs.metrics import NodeMetrics
from loom.security.acl import Decision, Policy, PolicyError
from loom.security.audit import AuditRecord, lane, record_for, result_of, should_audit
from loom.security.gateway import Caller, SpoofAttempt, resolve_principal
from loom.security.identity import Identity
from loom.state.command import POLICY_CHANGED, Command, Outcome
from loom.state.dedupe import FINGERPRINTED_SCOPE, request_fingerprint
from loom.state.machine import structure_of
from loom.wire import catalog
from loom.wire.catalog import Execution, Listener, MessageType
from loom.wire.codec import Request, error_response, ok_response
from loom.wire.errors import (
    BadRequest,
    Busy,
    Forbidden,
    Internal,
    LoomError,
    Status,
    Unauthenticated,
    Unavailable,
    UnsupportedVersion,
)

if TYPE_CHECKING:  # imported by the node only when [trace] is configured
    from loom.obs.tracing import Tracing

log = logging.getLogger("loom.dispatch")
RECENT_REFUSALS = 50
_REFUSALS = frozenset({"denied", "unauthenticated"})

# The Raft driver's name for each cluster administration type (`Replicator.admin`); the
# catalog decides which types these are, the assertion keeps the two in step.
_ADMIN_VERBS = {"MEMBER_ADD": "add", "MEMBER_PROMOTE": "promote", "MEMBER_REMOVE": "remove",
                "LEADER_TRANSFER": "transfer"}
assert frozenset(_ADMIN_VERBS) == catalog.names_with(Execution.CLUSTER_ADMIN)
# The types the node runs in the caller's task: a backup (node/backup.py) and the data-key
# commands (node/keys.py).
assert catalog.names_with(Execution.NODE_TASK) == {"SNAPSHOT_SAVE", "KEYS_ROTATE",
                                                  "KEYS_REWRAP"}

# How many times in a row a write refused at apply for a changed ACL policy is decided again
# and proposed anew before the caller hears BUSY (policy changes are rare; this bounds a storm).
MAX_POLICY_RETRIES = 3


def _forbidden(caller: Caller, mt: MessageType, body: dict[str, Any],
               decision: Decision) -> Forbidden:
    """The refusal the caller gets; a batch's names the member that was refused."""
    m = decision.member
    # A grant kept back only by its `when` conditions: the message (and so the audit record)
    # names the grant and the condition that failed.
    why = f" ({decision.reason})" if decision.rule.endswith(" when") else ""
    if m is None:
        where = f" on {body['name']!r}" if "name" in body else ""
        return Forbidden(f"{caller.principal} may not {mt.name}{where}{why}",
                         reason=decision.reason)
    where = (f" on {m.structure!r}" if m.structure is not None else "") + (
        f" key {m.key!r}" if m.key is not None else "")
    member = {k: v for k, v in (("structure", m.structure), ("key", m.key)) if v is not None}
    return Forbidden(f"{caller.principal} may not {mt.name}: ops[{m.index}] {m.op}{where} is "
                     f"not allowed{why}", reason=decision.reason, op_index=m.index, op=m.op,
                     **member)


def _name_member(rec: AuditRecord, body: dict[str, Any], err: LoomError) -> None:
    """A batch refused (FORBIDDEN) or failed (its apply error) because of one member: the
    record names that member's index, type, structure and key, as the error does."""
    i = err.details.get("op_index")
    ops = body.get("ops")
    if not isinstance(i, int) or not isinstance(ops, list) or not 0 <= i < len(ops):
        return
    op, b = ops[i]["op"], ops[i]["b"]
    keys = catalog.keys_touched(catalog.BY_NAME[op], b)
    rec.op_index, rec.op = i, op
    rec.structure = err.details.get("structure", b.get("name"))
    rec.key = err.details.get("key", keys[0] if keys else None)


class Session(Protocol):
    """What the dispatcher needs from the transport's connection."""

    conn_id: str  # server-assigned ("c17"); the only client id audit trusts
    identity: Identity
    client_id: str  # from HELLO, scopes retry deduplication
    version: int
    listener: str  # the listener it came through: a loom.obs.metrics.LISTENERS entry
    source: str  # the connection's source IP address (policy `when.source` conditions)

    def subscribe(self, topic: str, request_id: int, from_seq: int | None) -> int: ...
    def unsubscribe(self, subscription: int) -> bool: ...


@dataclass(slots=True)
class Call:
    """One request between `start` (identified, validated, authorized) and its answer."""

    sess: Session
    req: Request
    t0: float  # trio time the request reached the dispatcher (audit duration)
    mt: MessageType | None = None
    caller: Caller | None = None
    body: dict[str, Any] = field(default_factory=dict)
    redact: bool = False  # allowed, but the reply would reveal data the caller may not read
    redact_ops: tuple[int, ...] = ()  # BATCH_EXECUTE members whose results are withheld
    waits: bool = False  # may wait (timeout_ms) or administers the cluster: needs `run`
    stale: bool = False  # a read answered from this node's replica (no leader round trip)
    identity_refused: bool = False  # the identity headers were refused (always audited)
    policy_version: int = -1  # the ACL version `start` decided under
    span: Any = None  # the request's span while tracing is on (obs/tracing.py), else None


@dataclass
class DispatchStats:
    requests: int = 0
    denied: int = 0
    errors: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Dispatcher:
    def __init__(
        self, *, node_id: str, replicator: Replicator, audit: AuditLog,
        gateways: frozenset[str], seed_policy: Policy, audit_reads: bool = False,
        clock_ms: Callable[[], int] = now_ms,
        extra_stats: Callable[[], dict[str, Any]] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.node_id = node_id
        self.replicator = replicator
        self.audit = audit
        self.gateways = gateways
        self.audit_reads = audit_reads
        self.clock_ms = clock_ms
        self.extra_stats = extra_stats
        self.tracing = tracing
        self.stats = DispatchStats()
        self._seed_policy = seed_policy
        self._policy: Policy | None = None
        self._policy_version = -1
        # The last refusals (denied, unauthenticated), newest last, for the dashboard; filled
        # only on those paths, so the request path of an allowed request pays nothing.
        self.recent_refusals: deque[dict[str, Any]] = deque(maxlen=RECENT_REFUSALS)
        self.metrics = NodeMetrics(self.node_statistics)
        # SNAPSHOT_SAVE's handler (node/backup.py); None: the type answers UNAVAILABLE.
        self.snapshot_saver: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        # KEYS_ROTATE's and KEYS_REWRAP's handlers (node/keys.py), by type name.
        self.node_tasks: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}

    # -- the policy in force: the replicated document, else the configured seed ----------------
    def policy(self) -> Policy:
        # Compared with the replica's version on every call, not only invalidated by
        # `on_applied`: a snapshot install replaces the state machine without an apply.
        sm = self.replicator.state()
        if self._policy is None or sm.acl_version != self._policy_version:
            doc = sm.read(Command("ACL_GET", {}, self.clock_ms())).value
            version = doc["version"] if doc else 0
            if doc and doc.get("policy") is not None:
                self._policy = Policy.from_config(doc["policy"])
            else:
                self._policy = self._seed_policy
            self._policy_version = version
        return self._policy

    # Why this node serves nothing (it was removed from the cluster), or None (server.py sets it).
    removed: Callable[[], str | None] = staticmethod(lambda: None)

    def on_applied(self, applied: Applied) -> None:
        """Called by the log driver after every apply (same trio run, no awaits)."""
        op = applied.cmd.op
        if op == "ACL_SET" and applied.outcome.status is Status.OK:
            self._policy = None  # re-read lazily: the replicated document changed

    # -- the request path ----------------------------------------------------------------------
    #
    #   start(sess, req)  steps 1-5, synchronous: an answer (refusal, error, node-local reply)
    #                     or an authorized `Call`
    #   submit(call, deliver)   a call that cannot wait: handed to the log with a callback,
    #                     `deliver(answer)` runs once when it is applied (no task per request)
    #   await run(call)   a call that may wait (timeout_ms) or administers the cluster
    #
    # Every path ends in `_finish` or `_fail`, which write the one audit record (step 7).

    def start(self, sess: Session, req: Request) -> dict[str, Any] | Call:
        call = Call(sess, req, trio.current_time())
        self.stats.requests += 1
        if self.tracing is not None:
            call.span = self.tracing.request_span(req.trace, {"loom.node": self.node_id,
                                                              "loom.listener": sess.listener})
        try:
            mt = call.mt = catalog.lookup(req.opcode, Listener.CLIENT)
            self.stats.by_type[mt.name] = self.stats.by_type.get(mt.name, 0) + 1
            if req.version != sess.version:
                raise UnsupportedVersion(
                    f"protocol version {req.version} differs from the negotiated {sess.version}")
            if mt.name == "HELLO":
                raise BadRequest("HELLO was already done on this connection")
            policy = self._resolve(call)
            body = call.body = catalog.validate_body(mt, req.body)
            self._decide(call, policy)
            caller = call.caller
            assert caller is not None
            if call.span is not None:
                call.span.add_event("acl")
            if req.stale and mt.is_write:
                raise BadRequest(f"only reads can be stale; {mt.name} is a "
                                 f"{mt.execution.value}")
            call.stale = req.stale
            if mt.execution is Execution.LOCAL:  # PING, WHOAMI, NODE_STATS: they say why
                return self._finish(call, self._LOCAL[mt.name](self, body, caller, sess, req))
            removed = self.removed()
            if removed is not None:  # no data, not even stale reads, from a removed node
                raise Unavailable(f"{self.node_id} was {removed}; it serves nothing "
                                  "(re-admit it with `members add --readmit`, then "
                                  "`loomd --join` on an empty data directory)")
            if mt.name == "ACL_SET":
                try:
                    Policy.from_config(body["policy"])  # refuse a policy that would not load
                except PolicyError as e:
                    raise BadRequest(f"ACL_SET: invalid policy: {e}") from None
            call.waits = (mt.execution in (Execution.CLUSTER_ADMIN, Execution.NODE_TASK)
                          or (mt.waits and body.get("timeout_ms", 0) > 0))
            return call
        except Exception as exc:  # every error becomes an answer
            return self._fail(call, exc)

    def _resolve(self, call: Call) -> Policy:
        """Step 3 under the policy in force now, which is returned (and its version noted)."""
        policy = self.policy()
        call.policy_version = self._policy_version
        try:
            call.caller = resolve_principal(call.sess.identity, call.req.headers,
                                            self.gateways, policy)
        except LoomError as e:
            # A malformed, ambiguous or untrusted assertion: audited whatever the type
            # (a read included), on the priority lane; the answer says where it failed.
            call.identity_refused = bool(call.req.headers)
            if call.identity_refused:
                e.details["identity_header"] = True
            raise
        return policy

    def _decide(self, call: Call, policy: Policy) -> None:
        """Step 5: the ACL decision for the resolved caller and the validated body."""
        assert call.mt is not None and call.caller is not None
        caller = call.caller
        # Conditions on time read this node's clock, here, before anything is proposed: the
        # decision is made once, on the deciding node, and never replayed by other replicas.
        now = datetime.fromtimestamp(self.clock_ms() / 1000, UTC)
        decision = policy.check_request(caller.roles, call.mt, call.body,
                                        caller.env(call.sess.source or None, now))
        if not decision.allowed:
            self.stats.denied += 1
            raise _forbidden(caller, call.mt, call.body, decision)
        call.redact, call.redact_ops = decision.redact, decision.redact_ops

    def _reauthorize_read(self, call: Call) -> None:
        """A linearizable read is served at an index at or past its ReadIndex, which may lie
        beyond the policy `start` decided under (a follower that had not yet applied a
        revocation the leader had committed): decide again under the policy the read is served
        at, so no read is ever allowed on an older policy than the state it returns (D8).
        A stale read is decided and served in one step, so it needs no second look."""
        assert call.mt is not None
        if call.mt.execution is Execution.LOG_READ and not call.stale:
            self.policy()
            if self._policy_version != call.policy_version:
                self._decide(call, self._resolve(call))

    def _redecide_write(self, call: Call, out: Outcome, attempt: int) -> bool:
        """True if the state machine refused the write because the ACL policy at its log
        position was not the one it was decided under (POLICY_CHANGED) and, decided again under
        the policy now in force (this replica has applied at least that far: the refusal came
        from its own apply), it is allowed: the caller proposes it anew, stamped with the new
        version. Raises FORBIDDEN if the policy now refuses it, and BUSY after
        MAX_POLICY_RETRIES changes in a row. Either way nothing of it was applied anywhere."""
        if out.status is not Status.FORBIDDEN or out.details.get("reason") != POLICY_CHANGED:
            return False
        self._decide(call, self._resolve(call))
        if attempt >= MAX_POLICY_RETRIES:
            raise Busy(f"the ACL policy changed {attempt} times while the write was in "
                       "flight; it was not applied (safe to retry)", retry_after_ms=100)
        return True

    def submit(self, call: Call, deliver: Callable[[dict[str, Any]], None]) -> None:
        """Hand a call that cannot wait (`not call.waits`) to the log; `deliver` gets its answer,
        exactly once, possibly before this returns (a read a cluster of one serves at once)."""
        assert call.mt is not None and call.caller is not None and not call.waits
        attempts = 0

        def on_done(out: Outcome | None, err: LoomError | None) -> None:
            nonlocal attempts
            if call.span is not None:
                call.span.add_event("applied")
            try:
                if err is not None:
                    raise err
                assert out is not None
                if self._redecide_write(call, out, attempts + 1):
                    attempts += 1
                    propose()  # answers through on_done again, or raises (BUSY, ...)
                    return
                self._reauthorize_read(call)
                answer = self._finish(call, out.raise_for_status())
            except Exception as exc:  # every error becomes an answer
                answer = self._fail(call, exc)
            deliver(answer)

        def propose() -> None:
            assert call.mt is not None
            if call.span is not None:
                call.span.add_event(
                    "read" if call.mt.execution is Execution.LOG_READ else "propose")
            self.replicator.submit(self._command(call),
                                   read=call.mt.execution is Execution.LOG_READ,
                                   stale=call.stale, on_done=on_done)

        try:
            propose()
        except Exception as exc:  # refused before it started (BUSY, UNAVAILABLE, ...)
            deliver(self._fail(call, exc))

    async def run(self, call: Call) -> dict[str, Any]:
        """Execute an authorized call in the caller's task, waiting as its type allows."""
        mt, caller = call.mt, call.caller
        assert mt is not None and caller is not None
        if call.span is not None:
            call.span.add_event("read" if mt.execution is Execution.LOG_READ else "propose")
        try:
            if mt.execution is Execution.CLUSTER_ADMIN:
                result = await self.replicator.admin(_ADMIN_VERBS[mt.name], **call.body)
            elif mt.execution is Execution.NODE_TASK and mt.name in self.node_tasks:
                result = await self.node_tasks[mt.name](call.body)
            elif mt.execution is Execution.NODE_TASK:
                if self.snapshot_saver is None or mt.name != "SNAPSHOT_SAVE":
                    raise Unavailable(f"this node does not run {mt.name}")
                result = await self.snapshot_saver(call.body)
            else:
                out = await self._run_waiting(call, read=mt.execution is Execution.LOG_READ,
                                              stale=call.stale)
                self._reauthorize_read(call)
                result = out.raise_for_status()
            if call.span is not None:
                call.span.add_event("applied")
        except Exception as exc:  # every error becomes an answer
            return self._fail(call, exc)
        return self._finish(call, result)

    def _command(self, call: Call) -> Command:
        assert call.mt is not None and call.caller is not None
        principal = call.caller.principal
        if not call.mt.is_write:
            return Command(call.mt.name, call.body, self.clock_ms(), "", 0, principal)
        sess, seq = call.sess, call.req.seq
        cid = f"{principal}/{sess.client_id}" if sess.client_id and seq else ""
        # An Idempotency-Key's write carries what it asked, so a key reused for another
        # request is refused at apply (loom/state/dedupe.py), on every replica alike.
        fp = (request_fingerprint(call.mt.name, call.body)
              if cid and sess.client_id.startswith(FINGERPRINTED_SCOPE) else b"")
        return Command(call.mt.name, call.body, self.clock_ms(), cid, seq if cid else 0,
                       principal, call.policy_version, fp)

    def _finish(self, call: Call, result: Any) -> dict[str, Any]:
        if call.redact:
            result = None  # the reply would reveal data the caller may not read
        elif call.redact_ops and isinstance(result, list):
            for i in call.redact_ops:  # batch members whose reply is withheld
                result[i] = None
        self._audit(call, None)
        return ok_response(call.req.request_id, result)

    def _fail(self, call: Call, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, LoomError):
            err = exc
            if not isinstance(err, Forbidden):
                self.stats.errors += 1
        else:  # a bug: answer INTERNAL, keep the connection and the node
            log.error("internal error handling request %d", call.req.request_id,
                      exc_info=exc)
            self.stats.errors += 1
            err = Internal(f"internal error ({type(exc).__name__})")
        self._audit(call, err)
        return error_response(call.req.request_id, err)

    async def _run_waiting(self, call: Call, *, read: bool, stale: bool) -> Outcome:
        """Run once; a waiting type that cannot proceed waits for its structure to change and
        runs again (stamped anew), until timeout_ms. The last attempt runs with timeout_ms=0
        so the answer is the type's own "nothing came" value, decided by the state machine
        like any other. A write refused at apply for a changed policy is decided again
        (`_redecide_write`) and proposed anew."""
        cmd = self._command(call)
        deadline = trio.current_time() + cmd.body.get("timeout_ms", 0) / 1000
        redecided = 0
        while True:
            if read:
                out = await self.replicator.read(cmd, stale=stale)
            else:
                out = await self.replicator.propose(cmd)
                if self._redecide_write(call, out, redecided + 1):
                    redecided += 1
                    cmd = replace(cmd, time_ms=self.clock_ms(),
                                  acl_version=call.policy_version)
                    continue
            if not out.wait:
                return out
            s = structure_of(cmd)
            assert s is not None, f"{cmd.op} waited without a structure"
            ev = self.replicator.changed_event(s)
            # A holder's session expires only when some command is applied: wake up when the
            # earliest session may be due and propose again (that apply expires it), instead
            # of sleeping until our own deadline on an idle cluster.
            wake_at = deadline
            due = self.replicator.state().next_session_deadline()
            if due is not None and not read:
                in_s = max(0.05, (due - self.clock_ms()) / 1000 + 0.01)
                wake_at = min(deadline, trio.current_time() + in_s)
            with trio.move_on_at(wake_at):
                await ev.wait()
            body = cmd.body
            if trio.current_time() >= deadline:
                body = {**body, "timeout_ms": 0}
            cmd = replace(cmd, body=body, time_ms=self.clock_ms())

    # -- local types: answered by this node from its own state, never through the log ---------
    def _ping(self, body: dict[str, Any], caller: Caller, sess: Session, req: Request) -> Any:
        return {"pong": True, "node": self.node_id}

    def _whoami(self, body: dict[str, Any], caller: Caller, sess: Session, req: Request) -> Any:
        return {"principal": caller.principal, "roles": list(caller.roles),
                "via_gateway": caller.via_gateway, "connection": sess.conn_id}

    def _node_stats(self, body: dict[str, Any], caller: Caller, sess: Session,
                    req: Request) -> Any:
        return self.node_statistics()

    def _metrics(self, body: dict[str, Any], caller: Caller, sess: Session, req: Request) -> Any:
        return self.metrics.exposition()

    def node_statistics(self) -> dict[str, Any]:
        """The NODE_STATS document; also what the metrics' scrape-time readings read."""
        st = self.audit.statistics()
        out: dict[str, Any] = {
            "node": self.node_id, "requests": self.stats.requests,
            "denied": self.stats.denied, "errors": self.stats.errors,
            "audit": {"emitted": st.emitted, "written": st.written, "dropped": st.dropped,
                      "queued_data": st.queued_data,
                      "queued_priority": st.queued_priority},
            "log": asdict(self.replicator.statistics()),
        }
        if self.extra_stats is not None:
            out.update(self.extra_stats())
        return out

    def _cluster_status(self, body: dict[str, Any], caller: Caller, sess: Session,
                        req: Request) -> Any:
        # which build this node runs (compiled or pure, which modules): loom/buildinfo.py
        return {**self.replicator.cluster_status(), "build": build_info().to_dict()}

    def _member_list(self, body: dict[str, Any], caller: Caller, sess: Session,
                     req: Request) -> Any:
        members = self.replicator.cluster_status()["members"]
        return {"members": [{k: m[k] for k in ("id", "voter", "peer_addr", "client_addr")}
                            for m in members]}

    def _subscribe(self, body: dict[str, Any], caller: Caller, sess: Session,
                   req: Request) -> Any:
        return {"subscription": sess.subscribe(body["name"], req.request_id,
                                               body.get("from_seq"))}

    def _unsubscribe(self, body: dict[str, Any], caller: Caller, sess: Session,
                     req: Request) -> Any:
        return {"removed": sess.unsubscribe(body["subscription"])}

    # Every LOCAL type of the catalog but HELLO, which the connection answers before dispatch
    # (checked at the end of this module).
    _LOCAL: dict[str, Callable[[Dispatcher, dict[str, Any], Caller, Session, Request], Any]] = {
        "PING": _ping, "WHOAMI": _whoami, "NODE_STATS": _node_stats, "METRICS_GET": _metrics,
        "CLUSTER_STATUS": _cluster_status, "MEMBER_LIST": _member_list,
        "TOPIC_SUBSCRIBE": _subscribe, "TOPIC_UNSUBSCRIBE": _unsubscribe,
    }

    # -- audit (what a record holds and which lane it takes: security/audit.py) -----------------
    def _audit(self, call: Call, err: LoomError | None) -> None:
        result = "ok" if err is None else result_of(err.status)
        mt, caller, sess, req = call.mt, call.caller, call.sess, call.req
        duration_s = trio.current_time() - call.t0
        if call.span is not None and self.tracing is not None:
            call.span.update_name(mt.name if mt is not None else "UNKNOWN")
            self.tracing.end(call.span, result)
        self.metrics.observe(mt.name if mt is not None else "unknown", sess.listener, result,
                             duration_s)
        if not call.identity_refused and not should_audit(mt, result,
                                                          audit_reads=self.audit_reads):
            return
        rec = record_for(
            client_id=sess.conn_id,
            principal=caller.principal if caller else sess.identity.principal,
            roles=caller.roles if caller else (),
            via_gateway=caller.via_gateway if caller else None,
            mt=mt, body=call.body if mt is not None and call.body else None, result=result,
            duration_ms=duration_s * 1000,
            reason=err.message if err is not None else None,
            command=None if mt else f"UNKNOWN({req.opcode})",
        )
        if err is not None and mt is not None and mt.name == "BATCH_EXECUTE":
            _name_member(rec, call.body, err)
        d = rec.to_dict()
        if req.trace:
            d["request_id"] = req.trace
        if result in _REFUSALS:
            self.recent_refusals.append({
                "time_ms": self.clock_ms(), "principal": d["principal"],
                "command": d["command"], "result": result, "reason": d.get("reason")})
        if call.identity_refused or isinstance(err, SpoofAttempt) or (
                isinstance(err, Unauthenticated) and req.headers):
            d["event"] = "identity_assertion_refused"
        self.audit.emit(d, priority=call.identity_refused or lane(rec) == "priority")


assert frozenset(Dispatcher._LOCAL) | {"HELLO"} == catalog.names_with(Execution.LOCAL)
