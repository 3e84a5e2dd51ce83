"""Loom: a Raft-replicated, zero-trust, in-memory data grid on trio."""

# First, before any module that may be compiled: decides the build (compiled or pure) and keeps
# a stale compiled module from shadowing its edited source (loom/buildinfo.py).
from loom import buildinfo as buildinfo

__version__ = "0.1.0"
