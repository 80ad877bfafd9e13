"""grpcurl, an independent gRPC client, against a live server: reflection, health, a full flow."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import TEST_CODE, TEST_NUMBER, LiveServer
from tests.tools import tool


def grpcurl(
    server: LiveServer, *args: str, data: dict[str, object] | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [tool("grpcurl"), "-plaintext"]
    if token:
        cmd += ["-H", f"authorization: Bearer {token}"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [server.target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_shows_every_service(server: LiveServer) -> None:
    services = ok(grpcurl(server, "list")).split()
    for name in ("AccountService", "KeyService", "MessagingService"):
        assert f"parley.v1.{name}" in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    described = ok(grpcurl(server, "describe", "parley.v1.AccountService"))
    assert "rpc CompleteVerification" in described


def test_health_check(server: LiveServer) -> None:
    out = json.loads(ok(grpcurl(server, "grpc.health.v1.Health/Check")))
    assert out == {"status": "SERVING"}
    out = json.loads(
        ok(
            grpcurl(
                server, "grpc.health.v1.Health/Check", data={"service": "parley.v1.AccountService"}
            )
        )
    )
    assert out == {"status": "SERVING"}


def test_verification_flow_with_test_number(server: LiveServer) -> None:
    svc = "parley.v1.AccountService"
    started = json.loads(
        ok(grpcurl(server, f"{svc}/StartVerification", data={"phone_number": TEST_NUMBER}))
    )
    done = json.loads(
        ok(
            grpcurl(
                server,
                f"{svc}/CompleteVerification",
                data={
                    "verification_id": started["verification_id"],
                    "code": TEST_CODE,
                    "device_name": "grpcurl",
                    "account_kind": "ACCOUNT_KIND_BUSINESS",
                },
            )
        )
    )
    assert done["device_id"] == 1
    devices = json.loads(ok(grpcurl(server, f"{svc}/ListDevices", token=done["auth_token"])))
    assert [d["name"] for d in devices["devices"]] == ["grpcurl"]

    denied = grpcurl(server, f"{svc}/ListDevices", token="wrong")
    assert denied.returncode != 0
    assert "Unauthenticated" in denied.stderr
    bad = grpcurl(server, f"{svc}/StartVerification", data={"phone_number": "555"})
    assert "InvalidArgument" in bad.stderr and "E.164" in bad.stderr
