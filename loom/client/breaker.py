"""Per-endpoint circuit breakers: stop dialling an endpoint that keeps failing (sans-IO: the
shells pass the time in; `protocol.Router` owns one breaker per endpoint).

States (`BreakerState`):
- CLOSED: dialled normally. `failures` consecutive connection failures or timeouts open it.
- OPEN: not dialled for the backoff window (`open_s`, doubled after every failed trial, at most
  `max_open_s`). A router offers it again only once the window has passed, and then after
  every closed endpoint, so a request never waits on it while another endpoint is healthy.
- HALF_OPEN: the window passed and one trial dial is under way (only one: the shells dial one
  endpoint at a time). Success closes it and resets the window; failure opens it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["BreakerPolicy", "BreakerState", "EndpointBreaker", "EndpointStatistics"]


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 3  # consecutive failures that open a closed breaker
    open_s: float = 1.0  # the first backoff window
    max_open_s: float = 30.0  # the window doubles after each failed trial, up to this

    def __post_init__(self) -> None:
        if self.failures < 1 or self.open_s <= 0 or self.max_open_s < self.open_s:
            raise ValueError("breaker: failures >= 1 and 0 < open_s <= max_open_s")


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    endpoint: str
    state: BreakerState
    consecutive_failures: int
    opened: int  # times it went from closed or half-open to open
    retry_in_s: float | None  # OPEN: seconds until a trial may be made (0: due now)


class EndpointBreaker:
    __slots__ = ("failures", "opened", "policy", "state", "until", "window")

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened = 0
        self.until = 0.0
        self.window = policy.open_s

    def closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def due(self, now: float) -> bool:
        """OPEN and its window has passed: a trial may be made."""
        return self.state is BreakerState.OPEN and now >= self.until

    def dialing(self, now: float) -> None:
        if self.due(now):
            self.state = BreakerState.HALF_OPEN

    def succeeded(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.window = self.policy.open_s

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.window = min(self.window * 2, self.policy.max_open_s)
            self._open(now)
        elif self.state is BreakerState.CLOSED and self.failures >= self.policy.failures:
            self._open(now)

    def abandoned(self) -> None:
        """The dial ended for the caller's reasons (its deadline, a cancellation), which say
        nothing about the endpoint: a trial in progress goes back to being due."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.until = now + self.window
        self.opened += 1

    def statistics(self, endpoint: str, now: float) -> EndpointStatistics:
        retry = max(0.0, self.until - now) if self.state is BreakerState.OPEN else None
        return EndpointStatistics(endpoint, self.state, self.failures, self.opened, retry)
