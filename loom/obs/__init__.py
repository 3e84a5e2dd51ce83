"""Observability: what a node exports about itself (metrics: `loom.obs.metrics`)."""
