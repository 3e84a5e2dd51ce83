"""The replicated state machine: data structures, deterministic apply, snapshot/restore.

Entry points: `StateMachine` (apply / read / snapshot / restore), `StateLimits`,
`structure_of`, and `Command` / `Outcome` (command.py).
"""

from loom.state.command import Command, Outcome
from loom.state.limits import StateLimits
from loom.state.machine import StateMachine, structure_of

__all__ = ["Command", "Outcome", "StateLimits", "StateMachine", "structure_of"]
