from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.client.fakeserver import FakeServer, Handler, Pki, kv_handler, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def serve(pki: Pki) -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Handler = kv_handler, *, require_client_cert: bool = False) -> FakeServer:
        s = FakeServer(pki.server_context(require_client_cert), handler)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def clean_loom_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LOOM_* variable of the caller's environment reaches loomctl."""
    for var in ("LOOM_ENDPOINTS", "LOOM_CA", "LOOM_CERT", "LOOM_KEY"):
        monkeypatch.delenv(var, raising=False)


BACKENDS = ("trio", "asyncio")


def on_both_backends(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test once under trio and once under asyncio (the async client is written
    on anyio and must behave the same on both)."""

    @functools.wraps(test)
    def run(backend: str, *args: Any, **kwargs: Any) -> None:
        anyio.run(functools.partial(test, *args, **kwargs), backend=backend)

    sig = inspect.signature(test)
    params = [inspect.Parameter("backend", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              *sig.parameters.values()]
    run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return pytest.mark.parametrize("backend", BACKENDS)(run)
