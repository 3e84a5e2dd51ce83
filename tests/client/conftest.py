from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

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
