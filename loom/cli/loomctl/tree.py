"""The command tree of loomctl, as one table: every command, its help line, its handler, its
arguments. docs/cli.md describes the same tree; `loomctl COMMAND --help` prints a row."""

from __future__ import annotations

from typing import Any

from loom.cli.loomctl import audittail, cluster, data, offline, ops, top
from loom.cli.loomctl.base import offline as tool
from loom.cli.loomctl.base import ok, op
from loom.cli.loomctl.parser import Cmd, Group, cmd

TTL: dict[str, Any] = {"type": int, "metavar": "MS", "help": "time to live in ms"}
VFILE: dict[str, Any] = {"metavar": "FILE", "help": "read the value from FILE (VALUE may be "
                                                    "omitted)"}
WAIT: dict[str, Any] = {"type": int, "default": 0, "metavar": "MS", "help": "wait up to MS"}
INT: dict[str, Any] = {"type": int}
# A keyring wrapped by a PKCS#11 key (docs/security.md "Keys"), for the offline tools.
PKCS11_MODULE: dict[str, Any] = {"metavar": "LIB", "help": "a wrapped keyring: its PKCS#11 "
                                                           "library"}
KEK_PIN_FILE: dict[str, Any] = {"metavar": "FILE", "help": "a wrapped keyring: the token's PIN "
                                                           "(mode 0600)"}
FLAG: dict[str, Any] = {"action": "store_true"}
CURSOR: dict[str, Any] = {"metavar": "CURSOR"}
EXPECTED: dict[str, Any] = {"required": True, "metavar": "VALUE",
                            "help": "the value KEY must have now"}
SESSION: dict[str, Any] = {"type": int, "metavar": "ID",
                           "help": "use this session (default: open one)"}
HOLDER: dict[str, Any] = {**SESSION, "required": True, "help": "the holding session"}
SESSION_TTL: dict[str, Any] = {"type": int, "metavar": "MS",
                               "help": "TTL of the session opened for the command"}
PERMITS: dict[str, Any] = {"type": int, "metavar": "N", "help": "permits (default 1)"}
IF_ABSENT: dict[str, Any] = {**FLAG, "help": "only if KEY is absent"}


m = data.map_op
TREE: tuple[Group | Cmd, ...] = (
    # -- the default map (--map) -------------------------------------------------------------
    cmd("get", "print the value of KEY in the default map (--map)", data.get, "key"),
    cmd("put", "set KEY to VALUE in the default map ('-' reads stdin)", data.put, "key",
        "value?", ttl=TTL, file=VFILE, if_absent=IF_ABSENT),
    cmd("del", "delete KEY from the default map", data.delete, "key"),

    Group("map", "map commands (--name NAME, default: --map)",
          {"name": {"metavar": "NAME", "help": "map name (default: --map)"}}),
    cmd("map put", "set KEY to VALUE", data.put, "key", "value?", ttl=TTL, file=VFILE,
        if_absent=IF_ABSENT),
    cmd("map get", "value of KEY", data.get, "key"),
    cmd("map del", "delete KEY", data.delete, "key"),
    cmd("map replace", "set KEY to VALUE only if KEY is present; prints whether it was",
        m("MAP_REPLACE", "key", "ttl_ms=ttl", value="value"), "key", "value?", ttl=TTL,
        file=VFILE),
    cmd("map cas", "set KEY to VALUE only if its value is --expected; prints whether it was",
        m("MAP_COMPARE_AND_SET", "key", "ttl_ms=ttl", value="value", expected=True), "key",
        "value?", expected=EXPECTED, ttl=TTL, file=VFILE),
    cmd("map remove-if", "delete KEY only if its value is --expected; prints whether it was",
        m("MAP_REMOVE_IF_EQUAL", "key", expected=True), "key", expected=EXPECTED),
    cmd("map get-and-delete", "delete KEY and print the value it had", data.get_and_delete, "key"),
    cmd("map get-all", "values of several KEYS (absent keys omitted)", data.get_all, "keys+"),
    cmd("map put-all", "set several KEY=VALUE pairs in one atomic write; prints how many",
        data.put_all,
        "pairs+", ttl=TTL),
    cmd("map contains", "whether KEY is present", m("MAP_CONTAINS", "key"), "key"),
    cmd("map keys", "a page of keys", m("MAP_KEYS", "cursor", "limit"), cursor=CURSOR,
        limit=INT),
    cmd("map size", "number of entries", m("MAP_SIZE")),
    cmd("map clear", "remove every entry", m("MAP_CLEAR", wrap=ok)),
    cmd("map scan", "a page of entries whose key matches a glob",
        m("MAP_SCAN", "match", "cursor", "limit"), match={"metavar": "GLOB"}, cursor=CURSOR,
        limit=INT),
    cmd("map ttl", "remaining TTL of KEY (or --set MS / --clear)", data.ttl, "key",
        set={"type": int, "metavar": "MS"}, clear=FLAG),

    Group("queue", "queue commands"),
    cmd("queue push", "offer VALUE", op("QUEUE_PUSH", "name", value="value", wrap=ok), "name",
        "value?", file=VFILE),
    cmd("queue poll", "take the head item", op("QUEUE_POLL", "name", "timeout_ms=wait"),
        "name", wait=WAIT),
    cmd("queue peek", "the head item", op("QUEUE_PEEK", "name"), "name"),
    cmd("queue size", "number of items", op("QUEUE_SIZE", "name"), "name"),
    cmd("queue drain", "take up to --max items", op("QUEUE_DRAIN", "name", "max"), "name",
        max=INT),
    cmd("queue clear", "remove every item", op("QUEUE_CLEAR", "name", wrap=ok), "name"),
    cmd("queue create", "create with a capacity", op("QUEUE_CREATE", "name", "capacity",
                                                     wrap=ok), "name", "capacity:int"),

    Group("set", "set commands"),
    cmd("set add", "add MEMBER", op("SET_ADD", "name", "member"), "name", "member"),
    cmd("set remove", "remove MEMBER", op("SET_REMOVE", "name", "member"), "name", "member"),
    cmd("set contains", "whether MEMBER is present", op("SET_CONTAINS", "name", "member"),
        "name", "member"),
    cmd("set members", "a page of members", op("SET_MEMBERS", "name", "cursor", "limit"),
        "name", cursor=CURSOR, limit=INT),
    cmd("set size", "number of members", op("SET_SIZE", "name"), "name"),
    cmd("set clear", "remove every member", op("SET_CLEAR", "name", wrap=ok), "name"),

    Group("list", "list commands"),
    cmd("list lpush", "prepend VALUE", op("LIST_PUSH_LEFT", "name", value="value"), "name",
        "value?", file=VFILE),
    cmd("list rpush", "append VALUE", op("LIST_PUSH_RIGHT", "name", value="value"), "name",
        "value?", file=VFILE),
    cmd("list lpop", "remove the first item", op("LIST_POP_LEFT", "name"), "name"),
    cmd("list rpop", "remove the last item", op("LIST_POP_RIGHT", "name"), "name"),
    cmd("list get", "item at INDEX", op("LIST_GET", "name", "index"), "name", "index:int"),
    cmd("list set", "replace the item at INDEX",
        op("LIST_SET", "name", "index", value="value", wrap=ok), "name", "index:int", "value?",
        file=VFILE),
    cmd("list range", "items START..STOP inclusive", op("LIST_RANGE", "name", "start", "stop"),
        "name", "start:int", "stop:int"),
    cmd("list size", "number of items", op("LIST_SIZE", "name"), "name"),
    cmd("list trim", "keep items START..STOP", op("LIST_TRIM", "name", "start", "stop",
                                                  wrap=ok), "name", "start:int", "stop:int"),

    Group("counter", "counter (atomic long) commands"),
    cmd("counter get", "current value", op("COUNTER_GET", "name"), "name"),
    cmd("counter set", "set the value", op("COUNTER_SET", "name", "value", wrap=ok), "name",
        "value:int"),
    cmd("counter incr", "add one", op("COUNTER_INCREMENT", "name"), "name"),
    cmd("counter decr", "subtract one", op("COUNTER_DECREMENT", "name"), "name"),
    cmd("counter add", "add DELTA", op("COUNTER_ADD", "name", "delta"), "name", "delta:int"),
    cmd("counter cas", "set VALUE if the value is EXPECTED",
        op("COUNTER_COMPARE_AND_SET", "name", "expected", "value"), "name", "expected:int",
        "value:int"),

    Group("lock", "fenced lock commands (a lock taken without --session is held by a session "
                  "opened for the command, released when that session expires)"),
    cmd("lock acquire", "acquire, waiting up to --wait MS; prints the session and the fencing "
                        "token (exit 1 if not acquired)",
        data.acquire("LOCK_LOCK", "lock", timeout_ms="wait"), "name", wait=WAIT,
        session=SESSION, session_ttl=SESSION_TTL),
    cmd("lock try", "acquire if free; prints the session and the fencing token (exit 1 if "
                    "held)", data.acquire("LOCK_TRY_LOCK", "lock"), "name", session=SESSION,
        session_ttl=SESSION_TTL),
    cmd("lock release", "release one hold of --session",
        op("LOCK_UNLOCK", "name", "session_id=session", wrap=ok), "name", session=HOLDER),
    cmd("lock status", "whether held, and the fencing token", op("LOCK_IS_LOCKED", "name"),
        "name"),
    cmd("lock owner", "holding session, hold count, fencing token",
        op("LOCK_GET_OWNER", "name"), "name"),
    cmd("lock force-unlock", "release whoever holds it (admin)",
        op("LOCK_FORCE_UNLOCK", "name", wrap=ok), "name"),

    Group("semaphore", "semaphore commands (sessions as for lock)"),
    cmd("semaphore init", "initialise with PERMITS", op("SEMAPHORE_INIT", "name", "permits"),
        "name", "permits:int"),
    cmd("semaphore acquire", "take permits, waiting up to --wait MS (exit 1 if not acquired)",
        data.acquire("SEMAPHORE_ACQUIRE", "semaphore", permits="permits", timeout_ms="wait"),
        "name", permits=PERMITS, wait=WAIT, session=SESSION, session_ttl=SESSION_TTL),
    cmd("semaphore try", "take permits if available (exit 1 if not)",
        data.acquire("SEMAPHORE_TRY_ACQUIRE", "semaphore", permits="permits"), "name",
        permits=PERMITS, session=SESSION, session_ttl=SESSION_TTL),
    cmd("semaphore release", "return permits held by --session",
        op("SEMAPHORE_RELEASE", "name", "session_id=session", "permits", wrap=ok), "name",
        permits=PERMITS, session=HOLDER),
    cmd("semaphore available", "available permits", op("SEMAPHORE_AVAILABLE", "name"), "name"),

    Group("latch", "count-down latch commands"),
    cmd("latch set", "set COUNT if at zero", op("LATCH_TRY_SET_COUNT", "name", "count"), "name",
        "count:int"),
    cmd("latch countdown", "decrement", op("LATCH_COUNT_DOWN", "name", wrap=ok), "name"),
    cmd("latch count", "current count", op("LATCH_GET_COUNT", "name"), "name"),
    cmd("latch await", "wait up to --wait MS for zero",
        op("LATCH_AWAIT", "name", "timeout_ms=wait"), "name", wait=WAIT),

    Group("ref", "atomic reference commands"),
    cmd("ref get", "current value", op("ATOMIC_REF_GET", "name"), "name"),
    cmd("ref set", "set VALUE (no VALUE: clear)", data.ref_set, "name", "value?"),
    cmd("ref cas", "set --value if the value is --expected (absent: unset)",
        op("ATOMIC_REF_COMPARE_AND_SET", "name", "expected", "value"), "name",
        expected={"metavar": "V"}, value={"metavar": "V"}),

    Group("id", "id generator commands"),
    cmd("id next", "reserve --count ids; prints the first", op("ID_GEN_NEXT", "name", "count"),
        "name", count=INT),

    Group("topic", "topic commands"),
    cmd("topic publish", "publish VALUE", op("TOPIC_PUBLISH", "name", value="value"), "name",
        "value?", file=VFILE),
    cmd("topic subscribe", "print messages as they arrive (lost ranges on stderr)",
        data.subscribe, "name", from_seq={"type": int, "metavar": "SEQ"},
        count={"type": int, "metavar": "N", "help": "exit after N messages"},
        wait={"type": int, "default": 0, "metavar": "MS",
              "help": "fail if no message arrives for MS"}),

    cmd("batch", "apply the operations of FILE atomically (a JSON list of "
                 "{\"op\": NAME, \"b\": {...}}; '-': stdin)", data.batch, "file"),

    Group("session", "session commands"),
    cmd("session open", "open a session; prints its id", op("SESSION_OPEN", "ttl_ms=ttl"),
        ttl=TTL),
    cmd("session heartbeat", "keep session ID alive",
        op("SESSION_HEARTBEAT", "session_id", wrap=ok), "session_id:int"),
    cmd("session close", "close session ID, releasing its locks and permits",
        op("SESSION_CLOSE", "session_id", wrap=ok), "session_id:int"),

    Group("acl", "ACL policy commands"),
    cmd("acl get", "the policy in force and its version", op("ACL_GET")),
    cmd("acl set", "replace the policy with FILE (JSON, or TOML if *.toml; '-': stdin)",
        data.acl_set, "file", expected_version=INT),

    Group("struct", "structure administration"),
    cmd("struct list", "a page of structures", op("STRUCT_LIST", "category", "cursor", "limit"),
        category={"metavar": "CATEGORY"}, cursor=CURSOR, limit=INT),
    cmd("struct stats", "size and counters of a structure",
        op("STRUCT_STATS", "category", "name"), "category", "name"),
    cmd("struct destroy", "destroy a structure",
        op("STRUCT_DESTROY", "category", "name", wrap=ok), "category", "name"),

    Group("cluster", "cluster commands"),
    cmd("cluster status", "ask every endpoint for its Raft state; one row per node",
        cluster.cluster_status),
    Group("members", "membership commands (sent to the leader)"),
    cmd("members list", "members and their addresses", cluster.members_list),
    cmd("members add", "add NODE (a learner unless --voter)", cluster.members_add, "node",
        peer_addr={"required": True, "metavar": "HOST:PORT",
                   "help": "the new node's peer (Raft) address"},
        learner={**FLAG, "help": "add as a learner (the default)"},
        voter={**FLAG, "help": "add as a voter at once"},
        readmit={**FLAG, "help": "re-admit a removed NODE (refused otherwise); it comes back "
                                 "as a learner"}),
    cmd("members promote", "make the caught-up learner NODE a voter", cluster.members_promote,
        "node"),
    cmd("members remove", "remove NODE from the cluster", cluster.members_remove, "node"),
    cmd("members replace", "replace dead member NODE by --with NEW (started with loomd "
                           "--join): NEW joins as a learner, NODE is removed, NEW is promoted",
        ops.members_replace, "node",
        with_={"required": True, "metavar": "NEW", "help": "the replacement's node id"},
        peer_addr={"required": True, "metavar": "HOST:PORT",
                   "help": "the replacement's peer (Raft) address"},
        old_cert={"metavar": "FILE", "help": "NODE's certificate: prints its serial for the "
                                             "deny list"},
        wait={"type": float, "default": 60.0, "metavar": "SECONDS",
              "help": "how long each step may be refused for now (default 60)"}),
    Group("snapshot", "backups (restore: loomd restore)"),
    cmd("snapshot save", "save a consistent snapshot of the cluster from the leader to FILE "
                         "(checksummed; encrypted when the cluster encrypts at rest)",
        ops.snapshot_save, "file", force={**FLAG, "help": "replace FILE if it exists"}),
    Group("leader", "leadership commands (sent to the leader)"),
    cmd("leader transfer", "hand leadership to --to NODE (default: the most caught-up voter)",
        cluster.leader_transfer, to={"metavar": "NODE"}),
    Group("node", "node commands"),
    cmd("node stats", "this node's counters", op("NODE_STATS")),
    cmd("whoami", "the principal and roles requests run as", op("WHOAMI")),
    cmd("ping", "round trip to a node", cluster.ping),
    cmd("top", "live request rates and latencies per node (every endpoint's METRICS_GET), "
               "refreshed in place on a terminal; Ctrl-C stops it",
        top.top, interval={"type": float, "default": 2.0, "metavar": "SECONDS",
                           "help": "seconds between refreshes (default 2)"},
        count={"type": int, "default": 0, "metavar": "N",
               "help": "stop after N refreshes (default: until interrupted)"}),
    cmd("call", "send any operation: call OPNAME --json '{...}' (text for bytes fields is "
                "UTF-8 encoded)", cluster.call, "op", json={"default": "{}", "metavar": "OBJECT"}),

    # -- offline tools ------------------------------------------------------------------------
    Group("certs", "certificates (offline)"),
    cmd("certs dev", "write a development PKI to --out", tool(offline.certs_dev),
        out={"required": True, "metavar": "DIR"}, force=FLAG),
    cmd("certs ca", "create a new CA (ca.pem, ca.key) in --out; refuses to replace one",
        tool(offline.certs_ca), out={"required": True, "metavar": "DIR"},
        name={"metavar": "CN", "help": "the CA's common name (default: Loom CA <date>)"}),
    cmd("certs issue", "issue a certificate from the CA in --ca-dir: KIND is node, client or "
                       "gateway; writes NAME.pem and NAME.key (0600) to --out, never "
                       "replacing a file", tool(offline.certs_issue), "kind", "name",
        ca_dir={"required": True, "metavar": "DIR", "help": "holds ca.pem and ca.key"},
        out={"metavar": "DIR", "help": "where to write (default: --ca-dir)"},
        role={"action": "append", "metavar": "ROLE",
              "help": "client: the ACL role(s) to grant its principal (printed as the "
                      "[acl.principals] line to apply with 'acl set')"},
        trust_domain={"default": "loom.dev", "metavar": "DOMAIN"},
        dns={"action": "append", "metavar": "NAME", "help": "node, gateway: a DNS name it is "
                                                           "reached by (default localhost)"},
        ip={"action": "append", "metavar": "ADDR", "help": "node, gateway: an IP address it is "
                                                          "reached by (default loopback)"},
        days={"type": int, "default": 825, "metavar": "N", "help": "validity in days"},
        passphrase_file={"metavar": "FILE", "help": "encrypt NAME.key (PKCS#8) under the "
                                                    "passphrase in FILE (mode 0600)"}),
    Group("wal", "write-ahead log tools (offline)"),
    cmd("wal inspect", "summarise the log of a data directory (DIR or DIR/raft)",
        tool(offline.wal_inspect), "dir", keyring={"metavar": "FILE"},
        pkcs11_module=PKCS11_MODULE, kek_pin_file=KEK_PIN_FILE),
    cmd("wal verify", "check every record of a data directory's log (exit 1 if nothing was "
                      "checked, or an encrypted log without --keyring)",
        tool(offline.wal_verify), "dir", keyring={"metavar": "FILE"},
        pkcs11_module=PKCS11_MODULE, kek_pin_file=KEK_PIN_FILE),
    Group("keys", "encryption-at-rest data keys"),
    cmd("keys create", "create keyring FILE (offline): plain, or with the four PKCS#11 options "
                       "its data key wrapped by an AES key in the token",
        tool(offline.keys_create), "file",
        pkcs11_module={"metavar": "LIB", "help": "the PKCS#11 library"},
        token={"metavar": "TOKEN", "help": "the token's label"},
        label={"metavar": "LABEL", "help": "the AES key-encryption key's label"},
        pin_file={"metavar": "FILE", "help": "the token's PIN (mode 0600)"}),
    cmd("keys rotate", "a new data key, in force at once on the node --endpoints names (new "
                       "segments and snapshots use it, older files stay readable); with FILE, "
                       "add it to a plain keyring offline instead (used from the next start)",
        ops.keys_rotate, "file?", pkcs11_module=PKCS11_MODULE, kek_pin_file=KEK_PIN_FILE),
    cmd("keys rewrap", "rewrap the data keys of the node --endpoints names under another "
                       "AES key of its PKCS#11 module (a plain keyring becomes a wrapped one)",
        ops.keys_rewrap, label={"required": True, "metavar": "LABEL",
                                "help": "the new key-encryption key's label"},
        token={"metavar": "TOKEN", "help": "its token (default: the one in use)"}),
    Group("audit", "audit log tools (offline)"),
    cmd("audit verify", "check that every seq in FILES (a log and its rotated copies) is "
                        "present or inside a dropped range (exit 1 otherwise)",
        tool(offline.audit_verify), "files+"),
    cmd("audit tail", "the last records of an audit FILE (--lines N, default 10), filtered; "
                      "with --follow, new records as they are written (across rotations)",
        tool(audittail.audit_tail), "file", lines={"type": int, "default": 10, "metavar": "N"},
        follow=FLAG, principal={"metavar": "P", "help": "only records of principal P"},
        result={"metavar": "RESULT", "help": "only records with this result (ok, denied, "
                                             "unauthenticated, ...)"},
        interval={"type": float, "default": 0.25, "metavar": "SECONDS",
                  "help": "--follow: how often the file is read"}),
)
