"""`parley grpcurl keys|encrypt|decrypt`: the crypto steps of a grpcurl session, offline.

The RPCs here go through the generated stubs and their JSON goes through protobuf's JSON
printer, which writes what grpcurl writes (lowerCamelCase names, base64 bytes, 64-bit integers
as strings); docs/grpcurl.md's test drives the same helpers with the real grpcurl binary.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from google.protobuf import json_format
from parley.v1 import account_pb2 as apb
from parley.v1 import key_pb2 as kpb
from parley.v1 import key_pb2_grpc, messaging_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from client import grpcurl_helpers
from client.cli import main
from client.store import DB_FILENAME
from tests.conftest import Device, LiveServer, register

ALICE = "+14155550123"
BOB = "+442079460123"


def helper(
    capsys: pytest.CaptureFixture[str], server: LiveServer, profile: Path, *args: str
) -> tuple[int, str, str]:
    code = main(["--profile", str(profile), "--server", server.target, "grpcurl", *args])
    out, err = capsys.readouterr()
    return code, out, err


def ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    return out


def refused(result: tuple[int, str, str]) -> str:
    code, _, err = result
    assert code == 1 and err.startswith("parley: ") and "Traceback" not in err
    return err


def keys(server: LiveServer) -> key_pb2_grpc.KeyServiceStub:
    return key_pb2_grpc.KeyServiceStub(server.channel())


def messaging(server: LiveServer) -> messaging_pb2_grpc.MessagingServiceStub:
    return messaging_pb2_grpc.MessagingServiceStub(server.channel())


def upload(
    capsys: pytest.CaptureFixture[str], server: LiveServer, profile: Path, device: Device
) -> kpb.PreKeyCount:
    """keys from the CompleteVerification answer as grpcurl prints it, then UploadPreKeys."""
    answer = apb.CompleteVerificationResponse(
        account_id=device.account_id, device_id=device.device_id, auth_token=device.token
    )
    registration = profile.with_suffix(".registration.json")
    registration.write_text(json_format.MessageToJson(answer))
    body = ok(helper(capsys, server, profile, "keys", "--registration", str(registration)))
    request = json_format.Parse(body, kpb.UploadPreKeysRequest())
    # The server verifies every XEdDSA signature: acceptance is the proof they are valid.
    return keys(server).UploadPreKeys(request, metadata=device.metadata).count


def inbox(server: LiveServer, device: Device, path: Path) -> Path:
    """ReceiveMessages up to the queue_empty marker, written as grpcurl prints a stream."""
    parts = []
    call = messaging(server).ReceiveMessages(
        mpb.ReceiveMessagesRequest(), metadata=device.metadata, timeout=20
    )
    for response in call:
        parts.append(json_format.MessageToJson(response))
        if response.HasField("queue_empty"):
            break
    call.cancel()  # type: ignore[no-untyped-call]
    path.write_text("\n".join(parts) + "\n")
    return path


def send(server: LiveServer, device: Device, body: str) -> mpb.SendMessageResponse:
    request = json_format.Parse(body, mpb.SendMessageRequest())
    return messaging(server).SendMessage(request, metadata=device.metadata)


def test_a_conversation_with_the_helpers_doing_only_the_crypto(
    capsys: pytest.CaptureFixture[str], server: LiveServer, tmp_path: Path
) -> None:
    alice, bob = register(server, ALICE), register(server, BOB)
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    count = upload(capsys, server, alice_dir, alice)
    assert (count.pre_key_count, count.kyber_pre_key_count) == (3, 3)
    assert count.signed_pre_key_id and count.last_resort_kyber_pre_key_id
    upload(capsys, server, bob_dir, bob)

    bundles = keys(server).GetPreKeyBundles(
        kpb.GetPreKeyBundlesRequest(account_id=bob.account_id), metadata=alice.metadata
    )
    bundles_file = tmp_path / "bob-bundles.json"
    bundles_file.write_text(json_format.MessageToJson(bundles))
    # Long enough that random ciphertext never contains it by chance (2 bytes did, ~3% of runs).
    text = "Hi Bob, the plaintext"
    body = ok(helper(capsys, server, alice_dir, "encrypt", "--bundles", str(bundles_file), text))
    request = json_format.Parse(body, mpb.SendMessageRequest())
    assert request.recipient_account_id == bob.account_id
    assert [m.content_type for m in request.messages] == [mpb.CONTENT_TYPE_PREKEY]
    assert text.encode() not in request.messages[0].content
    sent = send(server, alice, body)

    received = inbox(server, bob, tmp_path / "bob-inbox.json")
    ack_file = tmp_path / "bob-ack.json"
    shown = ok(helper(capsys, server, bob_dir, "decrypt", str(received), "--ack", str(ack_file)))
    assert shown.rstrip().endswith(f"{alice.account_id} (device 1): {text}")
    again = ok(helper(capsys, server, bob_dir, "decrypt", str(received), "--json"))
    assert '"kind": "decrypted_before"' in again and f'"text": "{text}"' in again
    ack = json_format.Parse(ack_file.read_text(), mpb.AcknowledgeMessagesRequest())
    done = messaging(server).AcknowledgeMessages(ack, metadata=bob.metadata)
    assert done.acknowledged_envelopes == 1

    statuses = inbox(server, alice, tmp_path / "alice-inbox.json")
    shown = ok(helper(capsys, server, alice_dir, "decrypt", str(statuses), "--json"))
    assert f'"message_id": {sent.message_id}' in shown and '"delivered": true' in shown

    # Bob answers on the session Alice's first message set up (no bundle needed).
    reply = ok(helper(capsys, server, bob_dir, "encrypt", "--to", alice.account_id, "Hello"))
    assert json_format.Parse(reply, mpb.SendMessageRequest()).messages[0].content_type == (
        mpb.CONTENT_TYPE_WHISPER
    )
    send(server, bob, reply)
    shown = ok(helper(capsys, server, alice_dir, "decrypt", str(inbox(server, alice, ack_file))))
    assert f"{bob.account_id} (device 1): Hello\n" in shown


def test_encrypt_to_fetches_bundles_with_the_saved_token(
    capsys: pytest.CaptureFixture[str], server: LiveServer, tmp_path: Path
) -> None:
    alice, bob = register(server, ALICE), register(server, BOB)
    upload(capsys, server, tmp_path / "alice", alice)
    upload(capsys, server, tmp_path / "bob", bob)
    body = ok(helper(capsys, server, tmp_path / "alice", "encrypt", "--to", bob.account_id, "x"))
    send(server, alice, body)
    left = keys(server).GetPreKeyCount(kpb.GetPreKeyCountRequest(), metadata=bob.metadata)
    assert left.count.pre_key_count == 2  # the fetch took one of Bob's three one-time keys


def test_encrypt_prints_the_request_only_once_its_session_and_history_are_committed(
    capsys: pytest.CaptureFixture[str],
    server: LiveServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rule 1 of client.api for the helper too: the ciphertext leaves (is printed) only once
    the session it advanced is on disk, as another connection to the profile sees it."""
    alice, bob = register(server, ALICE), register(server, BOB)
    upload(capsys, server, tmp_path / "alice", alice)
    upload(capsys, server, tmp_path / "bob", bob)
    seen: list[tuple[int, int]] = []
    printer = grpcurl_helpers.request_json

    def printed_after_commit(message: mpb.SendMessageRequest) -> str:
        conn = sqlite3.connect(tmp_path / "alice" / DB_FILENAME)
        try:
            sessions = conn.execute(
                "SELECT count(*) FROM sessions WHERE account_id = ?", (bob.account_id,)
            ).fetchone()[0]
            history = conn.execute(
                "SELECT count(*) FROM messages WHERE text = 'committed first'"
            ).fetchone()[0]
        finally:
            conn.close()
        seen.append((sessions, history))
        return printer(message)

    monkeypatch.setattr(grpcurl_helpers, "request_json", printed_after_commit)
    ok(
        helper(
            capsys, server, tmp_path / "alice", "encrypt", "--to", bob.account_id, "committed first"
        )
    )
    assert seen == [(1, 1)]


def test_helpers_say_what_is_wrong(
    capsys: pytest.CaptureFixture[str], server: LiveServer, tmp_path: Path
) -> None:
    alice, bob = register(server, ALICE), register(server, BOB)
    fresh, alice_dir = tmp_path / "fresh", tmp_path / "alice"
    assert "say which device the keys are for" in refused(helper(capsys, server, fresh, "keys"))
    too_many = helper(
        capsys, server, fresh, "keys", "--account-id", alice.account_id, "--one-time-keys", "101"
    )
    assert "between 0 and 100" in refused(too_many)
    upload(capsys, server, alice_dir, alice)
    other = helper(capsys, server, alice_dir, "keys", "--account-id", bob.account_id)
    assert "already belongs to device 1 of account" in refused(other)

    # An answer without bundles (the server itself says NOT_FOUND for an account without keys).
    empty_file = tmp_path / "empty.json"
    empty_file.write_text(json_format.MessageToJson(kpb.GetPreKeyBundlesResponse()))
    err = refused(helper(capsys, server, alice_dir, "encrypt", "--bundles", str(empty_file), "x"))
    assert "no device with uploaded keys yet" in err
    not_json = tmp_path / "garbage.json"
    not_json.write_text("ERROR:\n  Code: Unauthenticated\n")
    err = refused(helper(capsys, server, alice_dir, "encrypt", "--bundles", str(not_json), "x"))
    assert "is not GetPreKeyBundlesResponse JSON" in err
    err = refused(helper(capsys, server, alice_dir, "decrypt", str(not_json)))
    assert "not grpcurl JSON" in err
    missing = str(tmp_path / "nope.json")
    assert "cannot read" in refused(helper(capsys, server, alice_dir, "decrypt", missing))

    tokenless = tmp_path / "tokenless"
    ok(helper(capsys, server, tokenless, "keys", "--account-id", bob.account_id, "--device-id=1"))
    err = refused(helper(capsys, server, tokenless, "encrypt", "--to", alice.account_id, "x"))
    assert "no auth token" in err

    # A wrong token is the server's refusal, printed as such.
    bad = tmp_path / "bad-token"
    ok(helper(capsys, server, bad, "keys", "--account-id", bob.account_id, "--token=-wrong"))
    err = refused(helper(capsys, server, bad, "encrypt", "--to", alice.account_id, "x"))
    assert err.startswith("parley: unauthenticated: ")


def test_a_message_from_a_changed_identity_is_held_not_acknowledged(
    capsys: pytest.CaptureFixture[str], server: LiveServer, tmp_path: Path
) -> None:
    """decrypt --ack must not acknowledge what `parley listen` would hold back: acknowledging
    deletes the envelope, and the message must wait until the user trusts the new key."""
    alice, bob = register(server, ALICE), register(server, BOB)
    alice_dir, bob_dir, ack_file = tmp_path / "alice", tmp_path / "bob", tmp_path / "ack.json"
    upload(capsys, server, alice_dir, alice)
    upload(capsys, server, bob_dir, bob)
    send(
        server, alice, ok(helper(capsys, server, alice_dir, "encrypt", "--to", bob.account_id, "1"))
    )
    first = str(inbox(server, bob, tmp_path / "first.json"))
    ok(helper(capsys, server, bob_dir, "decrypt", first, "--ack", str(ack_file)))
    ack = json_format.Parse(ack_file.read_text(), mpb.AcknowledgeMessagesRequest())
    messaging(server).AcknowledgeMessages(ack, metadata=bob.metadata)

    # Alice registers again: the same account, a new device 1 with a new identity key.
    again, again_dir = register(server, ALICE), tmp_path / "alice-again"
    upload(capsys, server, again_dir, again)
    send(
        server, again, ok(helper(capsys, server, again_dir, "encrypt", "--to", bob.account_id, "2"))
    )
    second = str(inbox(server, bob, tmp_path / "second.json"))
    shown = ok(helper(capsys, server, bob_dir, "decrypt", second, "--ack", str(ack_file)))
    assert "is held: their identity key changed" in shown and ": 2" not in shown
    held = json_format.Parse(ack_file.read_text(), mpb.AcknowledgeMessagesRequest())
    assert not held.envelope_ids
