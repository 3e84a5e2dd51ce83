"""Security: TLS contexts, identities and principals, ACL policy, gateway trust, audit records.

Everything here except `tls` is pure (no trio, no sockets) and is tested in-process.
"""
