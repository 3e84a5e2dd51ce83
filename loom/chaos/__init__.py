"""loom.chaos: real `loomd` processes under real faults, every history checked.

`python -m loom.chaos --runs N --seconds S` (docs/chaos.md). Layout: `cluster` starts and
signals the processes, `proxy` is the fault-injecting link between every pair of peers,
`nemesis/` holds one module per kind of fault, `workloads/` one module per workload with its
checker, `linear` the register linearizability checker, `history` the record of operations,
`run` one run from start to check.
"""
