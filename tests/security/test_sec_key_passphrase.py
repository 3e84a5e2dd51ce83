"""Where an encrypted key's passphrase comes from (security/tls.py `KeyPassphrase`), and the
handshake a context built from an encrypted key completes."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from loom.security.devpki import issue_leaf, load_ca
from loom.security.identity import Role
from loom.security.tls import KeyPassphrase, TLSConfigError, client_context, server_context
from tests.conftest import PKI


def _secret(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_the_file_content_without_its_final_line_break(tmp_path: Path) -> None:
    for raw, want in ((b"pw\n", b"pw"), (b"pw\r\n", b"pw"), (b"pw", b"pw"),
                      (b" pw with spaces \n", b" pw with spaces "), (b"a\nb\n", b"a\nb")):
        assert KeyPassphrase(_secret(tmp_path / "p", raw)).read() == want
    with pytest.raises(TLSConfigError, match="is empty"):
        KeyPassphrase(_secret(tmp_path / "p", b"\n")).read()
    with pytest.raises(TLSConfigError, match="longer than 1023 bytes"):
        KeyPassphrase(_secret(tmp_path / "p", b"x" * 1024)).read()
    with pytest.raises(TLSConfigError, match="accessible by group or others"):
        KeyPassphrase(_secret(tmp_path / "p", b"pw", 0o604)).read()
    with pytest.raises(TLSConfigError, match="cannot read key passphrase file"):
        KeyPassphrase(tmp_path / "missing").read()


def test_a_credential_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    _secret(tmp_path / "loomd-key-pass", b"s3cret", 0o400)
    src = KeyPassphrase(credential="loomd-key-pass")
    assert src.read({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == b"s3cret"
    with pytest.raises(TLSConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        src.read({})
    for bad in ("../etc/shadow", "a/b", "", ".hidden/x"):
        with pytest.raises(TLSConfigError):
            KeyPassphrase(credential=bad)
    with pytest.raises(TLSConfigError, match="give exactly one"):
        KeyPassphrase()
    with pytest.raises(TLSConfigError, match="KEK PIN comes from"):
        KeyPassphrase(tmp_path / "x", "y", what="KEK PIN")


def test_a_context_from_an_encrypted_key_completes_a_handshake(pki: PKI, tmp_path: Path) -> None:
    ca, ca_key = load_ca(pki.dir)
    cert, key = issue_leaf(ca, ca_key, tmp_path, Role.NODE, "n1", passphrase=b"pw")
    pw = KeyPassphrase(_secret(tmp_path / "pw", b"pw\n"))
    server = server_context(pki.ca, cert, key, require_client_auth=True, passphrase=pw)
    client = client_context(pki.ca, pki.dir / "admin.pem", pki.dir / "admin.key")
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    for _ in range(10):
        for side in (cli, srv):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert cli.getpeercert() and srv.getpeercert()
    _secret(tmp_path / "pw", b"wrong\n")
    with pytest.raises(TLSConfigError, match=r"wrong passphrase for private key .*n1\.key"):
        server_context(pki.ca, cert, key, require_client_auth=True, passphrase=pw)
