"""loom-gateway: the authenticating edge in front of a Loom cluster (docs/gateway.md).

It imports `wire`, `security` and `http`, never `node`, `raft`, `state` or `storage`: it is a
separate process that may run on another machine.
"""
