"""Deterministic whole-cluster simulation of Loom's Raft core (run: python -m loom.sim)."""
