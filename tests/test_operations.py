"""docs/operations.md's commands work as written against a real `parley-server` process.

The commands are read from the document itself, so the test and the docs cannot drift apart.
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc

from server.storage.migrations import LATEST_VERSION
from tests.test_readme import fenced_blocks
from tests.tools import REPO, server_process

OPERATIONS = REPO / "docs" / "operations.md"
NUMBER, CODE = "+15550001111", "123456"


def section(heading: str) -> str:
    """The text under `heading` (e.g. "### Restoring") up to the next heading of its level
    or above."""
    text = OPERATIONS.read_text()
    level = heading.split()[0]
    start = text.index(f"\n{heading}\n")
    end = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading) + 2 :], re.M)
    return text[start : start + len(heading) + 2 + end.start()] if end else text[start:]


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs the {tool} command: apt-get install {package}")


def _register(stub: account_pb2_grpc.AccountServiceStub) -> str:
    """Register the test number; return the primary device's token."""
    started = stub.StartVerification(apb.StartVerificationRequest(phone_number=NUMBER))
    done = stub.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=started.verification_id,
            code=CODE,
            device_name="phone",
            account_kind=apb.ACCOUNT_KIND_PERSON,
        )
    )
    return done.auth_token


def _link(stub: account_pb2_grpc.AccountServiceStub, token: str, name: str) -> None:
    auth = (("authorization", f"Bearer {token}"),)
    code = stub.CreateLinkingCode(apb.CreateLinkingCodeRequest(), metadata=auth)
    stub.LinkDevice(apb.LinkDeviceRequest(linking_code=code.linking_code, device_name=name))


def _device_names(stub: account_pb2_grpc.AccountServiceStub, token: str) -> list[str]:
    auth = (("authorization", f"Bearer {token}"),)
    return [d.name for d in stub.ListDevices(apb.ListDevicesRequest(), metadata=auth).devices]


def test_online_backup_and_restore_as_documented(tmp_path: Path) -> None:
    require("sqlite3", "sqlite3")
    online = fenced_blocks(section("### While the server runs"), "sh")
    (_, cli_backup), (_, python_backup), (_, check) = online
    ((_, restore),) = fenced_blocks(section("### Restoring"), "sh")
    db = tmp_path / "parley.db"
    args = ("--port", "0", "--database", str(db), "--test-number", f"{NUMBER}={CODE}")

    with (
        server_process(*args, log=tmp_path / "server.log") as (proc, port),
        grpc.insecure_channel(f"localhost:{port}") as channel,
    ):
        stub = account_pb2_grpc.AccountServiceStub(channel)
        token = _register(stub)
        _link(stub, token, "laptop")
        # The server has committed these rows, but they still sit in the WAL: a plain copy of
        # parley.db would miss them, the online backup must not.
        assert (tmp_path / "parley.db-wal").stat().st_size > 0
        for command in (cli_backup, python_backup):
            (tmp_path / "backup.db").unlink(missing_ok=True)
            sh(command, tmp_path)
            assert sh(check, tmp_path).stdout.strip() == "ok"
            backup = sqlite3.connect(tmp_path / "backup.db")
            try:
                assert backup.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
                assert backup.execute("SELECT count(*) FROM devices").fetchone()[0] == 2
            finally:
                backup.close()
        # The server went on serving throughout; this device exists only after the backup.
        _link(stub, token, "tablet")
        assert _device_names(stub, token) == ["phone", "laptop", "tablet"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    sh(restore, tmp_path)
    with (
        server_process(*args, log=tmp_path / "restored.log") as (_, port),
        grpc.insecure_channel(f"localhost:{port}") as channel,
    ):
        stub = account_pb2_grpc.AccountServiceStub(channel)
        assert _device_names(stub, token) == ["phone", "laptop"]


def test_documented_self_signed_certificate_serves_tls(tmp_path: Path) -> None:
    require("openssl", "openssl")
    ((_, make_certificate),) = fenced_blocks(section("## TLS"), "sh")
    sh(make_certificate, tmp_path)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    args = ["--port", "0", "--database", str(tmp_path / "p.db")]
    with server_process(*args, "--tls-cert", str(cert), "--tls-key", str(key)) as (_, port):
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
