"""Basic with real `htpasswd -nbB` output, API keys from header and query, and no secret in
any log at any level (SECURITY-CATALOGUE E3)."""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from loom.gateway.auth.api_key import ApiKeyAuthenticator
from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity
from loom.gateway.auth.basic import BasicAuthenticator
from loom.gateway.config import ApiKey, ApiKeyConfig, BasicConfig, BasicUser, load

pytestmark = pytest.mark.timeout(60)

HTPASSWD = shutil.which("htpasswd")
needs_htpasswd = pytest.mark.skipif(
    HTPASSWD is None, reason="htpasswd not installed (Debian apache2-utils; scripts/test.sh "
                             "installs it when it can)")


def htpasswd(user: str, password: str) -> str:
    assert HTPASSWD is not None
    out = subprocess.run([HTPASSWD, "-nbB", user, password], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    name, _, hashed = out.partition(":")
    assert name == user and hashed.startswith("$2y$")
    return hashed


def basic(user: str, password: str | bytes) -> AuthRequest:
    pw = password.encode() if isinstance(password, str) else password
    cred = base64.b64encode(user.encode() + b":" + pw)
    return AuthRequest(((b"authorization", b"Basic " + cred),))


@needs_htpasswd
async def test_real_htpasswd_hashes_verify_and_the_cache_spares_bcrypt(tmp_path: Path) -> None:
    hashed = htpasswd("admin", "correct horse")
    config_file = tmp_path / "gw.yaml"
    config_file.write_text(f"""
middleware:
  auth:
    basic:
      realm: "API Access"
      users: [{{username: admin, password_hash: "{hashed}", roles: [loom-admin]}}]
""")
    cfg = load(config_file, env={})
    auth = BasicAuthenticator(cfg.auth.basic)
    who = await auth.authenticate(basic("admin", "correct horse"))
    assert isinstance(who, Identity) and who.name == "basic:admin"
    assert who.roles == ("loom-admin",)
    for _ in range(20):
        assert await auth.authenticate(basic("admin", "correct horse")) == who
    stats = auth.statistics()
    assert stats.hashes == 1 and stats.cache_hits == 20
    wrong = await auth.authenticate(basic("admin", "wrong horse"))
    assert isinstance(wrong, AuthFailure) and wrong.status == 401
    assert wrong.challenge == 'Basic realm="API Access", charset="UTF-8"'
    nobody = await auth.authenticate(basic("nobody", "correct horse"))
    assert isinstance(nobody, AuthFailure) and nobody.status == 401
    assert auth.statistics().hashes == 3  # an unknown user is hashed too (no timing oracle)
    assert await auth.authenticate(AuthRequest(())) is None


def _config(password: bytes = b"pw", **kw: object) -> BasicConfig:
    import bcrypt

    h = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4))
    return BasicConfig(True, "r", (BasicUser("u", h),), **kw)  # type: ignore[arg-type]


async def test_secrets_over_72_bytes_are_refused_not_truncated() -> None:
    long = b"p" * 72
    auth = BasicAuthenticator(_config(long))
    assert isinstance(await auth.authenticate(basic("u", long)), Identity)
    # bcrypt would compare only the first 72 bytes: anything longer is refused explicitly
    r = await auth.authenticate(basic("u", long + b"X"))
    assert isinstance(r, AuthFailure) and r.reason == "password longer than 72 bytes"
    assert auth.statistics().hashes == 1


async def test_bcrypt_runs_behind_a_small_limiter_and_sheds_excess() -> None:
    auth = BasicAuthenticator(_config(max_concurrent_hashes=1), max_waiting=2)
    results: list[object] = []

    async def attempt(i: int) -> None:
        results.append(await auth.authenticate(basic("u", f"wrong-{i}")))

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(attempt, i)
    busy = [r for r in results if isinstance(r, AuthFailure) and r.status == 503]
    assert busy and all(r.retry_after == 1 for r in busy)  # type: ignore[union-attr]
    assert auth.statistics().hashes + auth.statistics().busy == 10
    assert auth.statistics().hashes <= 1 + 2 + 1  # running + waiting, not ten


async def test_malformed_basic_credentials() -> None:
    auth = BasicAuthenticator(_config())
    for raw in (b"Basic !!!", b"Basic " + base64.b64encode(b"no-colon"), b"Basic "):
        r = await auth.authenticate(AuthRequest(((b"authorization", raw),)))
        assert isinstance(r, AuthFailure) and r.status == 401


KEY = "k-3f9a2c7e1b5d4a6f"


def _keys(**kw: object) -> ApiKeyConfig:
    digest = hashlib.sha256(KEY.encode()).digest()
    other = hashlib.sha256(b"another").digest()
    return ApiKeyConfig(True, "X-API-Key", "api_key", (
        ApiKey("staging", other), ApiKey("production", digest, ("data-writer",), 1000.0)),
        **kw)  # type: ignore[arg-type]


async def test_api_key_from_header_and_query_string() -> None:
    auth = ApiKeyAuthenticator(_keys())
    for req in (AuthRequest(((b"x-api-key", KEY.encode()),)),
                AuthRequest((), query=f"x=1&api_key={KEY}")):
        who = await auth.authenticate(req)
        assert isinstance(who, Identity) and who.name == "apikey:production"
        assert who.roles == ("data-writer",) and who.rate_limit == 1000.0
        assert who.api_key == "production"
    wrong = await auth.authenticate(AuthRequest((), query="api_key=k-3f9a2c7e1b5d4a6e"))
    assert isinstance(wrong, AuthFailure) and wrong.status == 401
    both = await auth.authenticate(AuthRequest(((b"x-api-key", KEY.encode()),),
                                               query=f"api_key={KEY}"))
    assert isinstance(both, AuthFailure) and both.status == 400
    assert await auth.authenticate(AuthRequest((), query="other=1")) is None


async def test_plain_keys_are_accepted_with_a_warning(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(f"middleware: {{auth: {{api_key: {{keys: [{{name: dev, key: {KEY}}}]}}}}}}\n")
    f.chmod(0o600)
    cfg = load(f, env={})
    assert any("plain API key" in w for w in cfg.warnings)
    with caplog.at_level(logging.DEBUG):
        auth = ApiKeyAuthenticator(cfg.auth.api_key)
    assert "plain text" in caplog.text and KEY not in caplog.text
    who = await auth.authenticate(AuthRequest(((b"x-api-key", KEY.encode()),)))
    assert isinstance(who, Identity) and who.name == "apikey:dev"


async def test_no_secret_reaches_any_log_at_any_level(caplog: pytest.LogCaptureFixture) -> None:
    """Catalogue E3: failures are logged and counted with fixed reasons only."""
    password = "hunter2-very-secret"
    with caplog.at_level(logging.DEBUG):
        b = BasicAuthenticator(_config(password.encode()))
        k = ApiKeyAuthenticator(_keys())
        results = [await b.authenticate(basic("u", password)),
                   await b.authenticate(basic("u", password + "x")),
                   await k.authenticate(AuthRequest(((b"x-api-key", KEY.encode()),))),
                   await k.authenticate(AuthRequest(((b"x-api-key", b"wrong-" + KEY.encode()),)))]
    texts = caplog.text + "".join(repr(r) for r in results)
    for secret in (password, KEY, base64.b64encode(f"u:{password}".encode()).decode()):
        assert secret not in texts


async def test_every_key_digest_is_compared_whichever_matches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalogue E3: constant-time comparison, and no early exit that would show in the time
    taken which key matched."""
    import loom.gateway.auth.api_key as module

    compared: list[int] = []
    real = module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(1)
        return real(a, b)

    monkeypatch.setattr(module.hmac, "compare_digest", counting)
    digests = tuple(ApiKey(f"k{i}", hashlib.sha256(f"key-{i}".encode()).digest())
                    for i in range(7))
    auth = ApiKeyAuthenticator(ApiKeyConfig(True, "X-API-Key", None, digests))
    for presented in (b"key-0", b"key-6", b"wrong"):
        compared.clear()
        await auth.authenticate(AuthRequest(((b"x-api-key", presented),)))
        assert len(compared) == 7
