"""Typed convenience methods shared by `Client` and `AsyncClient`.

Each method builds a body and hands it to `call`; on `Client` it returns the result, on
`AsyncClient` it returns an awaitable (`await c.map_get("m", "k")`). Results are passed through
as the server answers them. Text given for a byte value is encoded as UTF-8.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

R = TypeVar("R")

Value = bytes | str


class Ops(Generic[R]):
    def call(self, op: str | int, /, **body: Any) -> R:
        raise NotImplementedError

    # -- client -------------------------------------------------------------------------------
    def ping(self) -> R:
        return self.call("PING")

    def whoami(self) -> R:
        return self.call("WHOAMI")

    def session_open(self, ttl_ms: int | None = None) -> R:
        return self.call("SESSION_OPEN", ttl_ms=ttl_ms)

    def session_heartbeat(self, session_id: int) -> R:
        return self.call("SESSION_HEARTBEAT", session_id=session_id)

    def session_close(self, session_id: int) -> R:
        return self.call("SESSION_CLOSE", session_id=session_id)

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> R:
        """Apply write operations atomically: [("MAP_PUT", {...}), ...]."""
        return self.call("BATCH_EXECUTE", ops=[{"op": o, "b": b} for o, b in ops])

    # -- map ----------------------------------------------------------------------------------
    def map_put(self, name: str, key: str, value: Value, *, ttl_ms: int | None = None,
                return_old: bool | None = None) -> R:
        return self.call("MAP_PUT", name=name, key=key, value=value, ttl_ms=ttl_ms,
                         return_old=return_old)

    def map_get(self, name: str, key: str) -> R:
        return self.call("MAP_GET", name=name, key=key)

    def map_delete(self, name: str, key: str) -> R:
        return self.call("MAP_DELETE", name=name, key=key)

    def map_put_if_absent(self, name: str, key: str, value: Value, *,
                          ttl_ms: int | None = None) -> R:
        return self.call("MAP_PUT_IF_ABSENT", name=name, key=key, value=value, ttl_ms=ttl_ms)

    def map_replace(self, name: str, key: str, value: Value, *, ttl_ms: int | None = None) -> R:
        return self.call("MAP_REPLACE", name=name, key=key, value=value, ttl_ms=ttl_ms)

    def map_contains(self, name: str, key: str) -> R:
        return self.call("MAP_CONTAINS", name=name, key=key)

    def map_size(self, name: str) -> R:
        return self.call("MAP_SIZE", name=name)

    def map_keys(self, name: str, *, cursor: str | None = None, limit: int | None = None) -> R:
        return self.call("MAP_KEYS", name=name, cursor=cursor, limit=limit)

    def map_clear(self, name: str) -> R:
        return self.call("MAP_CLEAR", name=name)

    def map_get_all(self, name: str, keys: list[str]) -> R:
        return self.call("MAP_GET_ALL", name=name, keys=keys)

    def map_put_all(self, name: str, entries: dict[str, Value], *,
                    ttl_ms: int | None = None) -> R:
        return self.call("MAP_PUT_ALL", name=name, entries=entries, ttl_ms=ttl_ms)

    def map_compare_and_set(self, name: str, key: str, expected: Value, value: Value, *,
                            ttl_ms: int | None = None) -> R:
        return self.call("MAP_COMPARE_AND_SET", name=name, key=key, expected=expected,
                         value=value, ttl_ms=ttl_ms)

    def map_set_ttl(self, name: str, key: str, ttl_ms: int | None) -> R:
        return self.call("MAP_SET_TTL", name=name, key=key, ttl_ms=ttl_ms)

    def map_get_ttl(self, name: str, key: str) -> R:
        return self.call("MAP_GET_TTL", name=name, key=key)

    def map_scan(self, name: str, *, match: str | None = None, cursor: str | None = None,
                 limit: int | None = None) -> R:
        return self.call("MAP_SCAN", name=name, match=match, cursor=cursor, limit=limit)

    # -- counter ------------------------------------------------------------------------------
    def counter_get(self, name: str) -> R:
        return self.call("COUNTER_GET", name=name)

    def counter_set(self, name: str, value: int) -> R:
        return self.call("COUNTER_SET", name=name, value=value)

    def counter_increment(self, name: str) -> R:
        return self.call("COUNTER_INCREMENT", name=name)

    def counter_decrement(self, name: str) -> R:
        return self.call("COUNTER_DECREMENT", name=name)

    def counter_add(self, name: str, delta: int) -> R:
        return self.call("COUNTER_ADD", name=name, delta=delta)

    def counter_compare_and_set(self, name: str, expected: int, value: int) -> R:
        return self.call("COUNTER_COMPARE_AND_SET", name=name, expected=expected, value=value)

    # -- queue --------------------------------------------------------------------------------
    def queue_push(self, name: str, value: Value) -> R:
        return self.call("QUEUE_PUSH", name=name, value=value)

    def queue_poll(self, name: str, *, timeout_ms: int = 0) -> R:
        return self.call("QUEUE_POLL", name=name, timeout_ms=timeout_ms)

    def queue_peek(self, name: str) -> R:
        return self.call("QUEUE_PEEK", name=name)

    def queue_size(self, name: str) -> R:
        return self.call("QUEUE_SIZE", name=name)

    def queue_drain(self, name: str, *, max_items: int | None = None) -> R:
        return self.call("QUEUE_DRAIN", name=name, max=max_items)

    # -- lock ---------------------------------------------------------------------------------
    def lock_lock(self, name: str, session_id: int, *, timeout_ms: int = 0) -> R:
        return self.call("LOCK_LOCK", name=name, session_id=session_id, timeout_ms=timeout_ms)

    def lock_try_lock(self, name: str, session_id: int) -> R:
        return self.call("LOCK_TRY_LOCK", name=name, session_id=session_id)

    def lock_unlock(self, name: str, session_id: int) -> R:
        return self.call("LOCK_UNLOCK", name=name, session_id=session_id)

    def lock_is_locked(self, name: str) -> R:
        return self.call("LOCK_IS_LOCKED", name=name)

    # -- topic --------------------------------------------------------------------------------
    def topic_publish(self, name: str, value: Value) -> R:
        return self.call("TOPIC_PUBLISH", name=name, value=value)

    # -- cluster ------------------------------------------------------------------------------
    def cluster_status(self) -> R:
        return self.call("CLUSTER_STATUS")

    def member_list(self) -> R:
        return self.call("MEMBER_LIST")
