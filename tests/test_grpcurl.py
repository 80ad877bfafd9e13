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
                    "verification_id": started["verificationId"],
                    "code": TEST_CODE,
                    "device_name": "grpcurl",
                    "account_kind": "ACCOUNT_KIND_BUSINESS",
                },
            )
        )
    )
    # Output uses the proto3 JSON names (lowerCamelCase) that reflection's descriptors carry;
    # requests accept those and the .proto names alike.
    assert done["deviceId"] == 1
    devices = json.loads(ok(grpcurl(server, f"{svc}/ListDevices", token=done["authToken"])))
    assert [d["name"] for d in devices["devices"]] == ["grpcurl"]

    denied = grpcurl(server, f"{svc}/ListDevices", token="wrong")
    assert denied.returncode != 0
    assert "Unauthenticated" in denied.stderr
    bad = grpcurl(server, f"{svc}/StartVerification", data={"phone_number": "555"})
    assert "InvalidArgument" in bad.stderr and "E.164" in bad.stderr


def test_describe_prints_the_proto_comments(server: LiveServer) -> None:
    """Reflection serves the descriptors with source info, so grpcurl shows the contract's
    rules next to each RPC, message and field (and finds methods by their full name)."""
    method = ok(grpcurl(server, "describe", "parley.v1.MessagingService.SendMessage"))
    assert "rpc SendMessage" in method
    assert "// SendMessage queues one ciphertext per device of the recipient." in method
    message = ok(grpcurl(server, "describe", "parley.v1.PreKeyBundle"))
    assert "// PreKeyBundle is everything needed to start a PQXDH session" in message
    assert "// The device's registration id." in message
    service = ok(grpcurl(server, "describe", "parley.v1.KeyService"))
    assert "// KeyService is the key directory" in service
    missing = grpcurl(server, "describe", "parley.v1.MessagingService.NoSuchMethod")
    assert missing.returncode != 0 and "not found" in missing.stderr.lower()
