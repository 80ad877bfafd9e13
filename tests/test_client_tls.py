"""The client over TLS: a server with a self-signed certificate made here, trusted with
--ca-file / PARLEY_CA_FILE (CLI) or ca_file= / credentials= (Python API)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from client.api import ParleyClient, ParleyClientError, TextMessage
from tests.client_helpers import drain
from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import ALICE, BOB, CODES, failed, lines, ok, parley
from tests.test_tls import self_signed
from tests.tools import tool


def parley_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`parley ARGS` with extra environment variables (and no --server option)."""
    return subprocess.run(
        [tool("parley"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.fixture
def tls_server(make_server: ServerFactory, tmp_path: Path) -> tuple[LiveServer, Path]:
    cert, key = self_signed(tmp_path)
    return make_server(tls_cert=cert, tls_key=key, test_numbers=CODES), cert


def test_the_cli_registers_sends_and_receives_over_tls(
    tls_server: tuple[LiveServer, Path], tmp_path: Path
) -> None:
    server, cert = tls_server
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(parley(server, alice, "--ca-file", str(cert), "register", ALICE, "--code", CODES[ALICE]))
    # The CA file also comes from the environment, like the server address.
    env = {"PARLEY_CA_FILE": str(cert), "PARLEY_SERVER": server.target}
    ok(parley_env(env, "--profile", str(bob), "register", BOB, "--code", CODES[BOB]))
    # Both profiles remember the connection: no TLS option is needed any more.
    (sent,) = lines(ok(parley(server, alice, "send", BOB, "over tls", "--json")))
    events = lines(ok(parley(server, bob, "listen", "--once", "--json")))
    (message,) = [e for e in events if e["kind"] == "message"]
    assert message["text"] == "over tls" and sent["device_ids"] == [1]
    # Plaintext to a TLS server fails with a hint, and leaves no profile behind.
    err = failed(parley(server, tmp_path / "carol", "--no-tls", "register", "+14155550177"))
    assert "cannot reach" in err
    assert not (tmp_path / "carol").exists()
    assert "cannot reach" in failed(parley(server, alice, "--no-tls", "devices"))
    # A certificate the client does not trust is refused too (another self-signed one).
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other, _ = self_signed(other_dir)
    assert "cannot reach" in failed(parley(server, alice, "--ca-file", str(other), "devices"))
    assert "cannot read the CA file" in failed(
        parley(server, alice, "--ca-file", str(tmp_path / "missing.pem"), "devices")
    )


def test_the_python_client_over_tls(tls_server: tuple[LiveServer, Path], tmp_path: Path) -> None:
    server, cert = tls_server

    async def body() -> None:
        # A CA file, or ready-made credentials: both trust the self-signed certificate.
        alice = ParleyClient.open(tmp_path / "alice", server=server.target, ca_file=cert)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        bob = ParleyClient.open(tmp_path / "bob", server=server.target, credentials=credentials)
        try:
            for client, phone in ((alice, ALICE), (bob, BOB)):
                verification_id = await client.request_code(phone)
                await client.register(phone, verification_id, CODES[phone])
            await alice.send(BOB, "hello over tls")
            (message,) = [e for e in await drain(bob) if isinstance(e, TextMessage)]
            assert message.text == "hello over tls"
            assert alice.connection.tls and alice.connection.ca_file == str(cert.resolve())
        finally:
            await alice.close()
            await bob.close()
        # Reopened without arguments, the profile still speaks TLS with its CA file.
        async with ParleyClient.open(tmp_path / "alice") as again:
            assert again.server == server.target
            assert [d.device_id for d in await again.devices()] == [1]

    asyncio.run(body())


def test_a_bad_ca_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ParleyClientError, match="no PEM certificate"):
        ParleyClient.open(tmp_path / "p", ca_file=not_pem)
    with pytest.raises(ParleyClientError, match="tls=False"):
        ParleyClient.open(tmp_path / "p", ca_file=not_pem, tls=False)


def test_tls_from_the_environment(tls_server: tuple[LiveServer, Path], tmp_path: Path) -> None:
    server, _ = tls_server
    profile = str(tmp_path / "p")
    env = {"PARLEY_SERVER": server.target}
    # PARLEY_TLS=1 trusts the system's roots, which do not include this self-signed certificate.
    register = ("--profile", profile, "register", "+15550009999", "--code", "1")
    err = failed(parley_env({**env, "PARLEY_TLS": "1"}, *register))
    assert "cannot reach" in err and "--tls" not in err  # TLS was on: no hint to turn it on
    err = failed(parley_env({**env, "PARLEY_TLS": "maybe"}, *register))
    assert "PARLEY_TLS='maybe' is not a yes/no value" in err
