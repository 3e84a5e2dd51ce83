"""Loom: a Raft-replicated, zero-trust, in-memory data grid on trio."""

__version__ = "0.1.0"
