"""`[http]` in the TOML and `loomd --http-listen`: parsed, validated, written back."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from loom.cli import loomd
from loom.node.config import ConfigError, load, to_toml
from loom.node.http import advertised_http_addr


def test_http_is_off_unless_listen_is_set(tmp_path: Path) -> None:
    cfg = load(None)
    assert cfg.http.listen == "" and advertised_http_addr(cfg) == ""
    assert "http" not in tomllib.loads(to_toml(cfg))


def test_toml_table_and_flag(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text('[http]\nlisten = "127.0.0.1:8443"\nmax_requests_in_flight = 7\n'
                 'idle_timeout_s = 5\n', encoding="utf-8")
    cfg = load(f)
    assert cfg.http.listen == "127.0.0.1:8443" and cfg.http.max_requests_in_flight == 7
    assert cfg.http.idle_timeout_s == 5.0
    assert advertised_http_addr(cfg) == "127.0.0.1:8443"
    assert tomllib.loads(to_toml(cfg))["http"]["max_requests_in_flight"] == 7
    cfg = load(f, {"http.listen": "127.0.0.1:0"})
    assert advertised_http_addr(cfg) == ""  # a port chosen at start cannot be advertised


@pytest.mark.parametrize(("toml", "key"), [
    ('[http]\nlisten = "nope"\n', "http.listen"),
    ('[http]\nmax_connections = 0\n', "http.max_connections"),
    ('[http]\nsurprise = 1\n', "http.surprise"),
    ('require_client_auth = false\n[http]\nlisten = "0.0.0.0:8443"\n', "require_client_auth"),
])
def test_invalid(tmp_path: Path, toml: str, key: str) -> None:
    f = tmp_path / "n.toml"
    f.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(f)


def test_loomd_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert loomd.main(["init", "--http-listen", "127.0.0.1:9443"]) == 0
    out = tomllib.loads(capsys.readouterr().out)
    assert out["http"]["listen"] == "127.0.0.1:9443"
