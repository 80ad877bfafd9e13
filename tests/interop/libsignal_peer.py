"""Typed Python driver for a real libsignal peer (Node.js, ``tests/interop/peer/peer.js``).

Parley's own Signal-protocol code (``client/crypto/``) is checked against libsignal itself by
talking to this peer. The peer is a long-running ``node peer.js <version>`` process speaking JSON
lines; this module hides that behind typed methods. All keys, signatures and messages are
``bytes`` in libsignal's serialized form (EC public key ``0x05 || 32``, KEM public key
``0x08 || 1568``, signatures 64 bytes, messages exactly as they go on the wire).

Versions
    ``"0.90"`` (npm ``@signalapp/libsignal-client@0.90.0``) and ``"current"`` (``0.103.0``); the
    constants :data:`V090` and :data:`VCURRENT` name them. :func:`ensure_installed` runs
    ``npm ci`` in ``tests/interop/peer`` when ``node_modules`` is missing.

Usage::

    with LibsignalPeer("0.90") as peer:
        bob = peer.create_identity("bob", 1)          # -> Identity (identity_key, registration_id)
        bundle = peer.generate_bundle(bob)            # -> PreKeyBundle (public parts only)
        # ... Parley (Alice) processes `bundle`, sends a PreKey message `ct` (type 3) ...
        plaintext = peer.decrypt(bob, Address("alice", 1), 3, ct)
        reply = peer.encrypt(bob, Address("alice", 1), b"hi")   # -> Ciphertext(type, body)

``LibsignalPeer`` methods (``local`` is an :class:`Identity` or :class:`Address` of an identity
created in *this* peer process; ``remote`` is an :class:`Address`, any name + device id):

* ``hello() -> dict``: package, libsignal version.
* ``create_identity(name, device_id, *, registration_id=None, identity_private=None) -> Identity``
  (``identity_private`` lets a test fix the 32-byte identity private key).
* ``generate_bundle(local, *, include_pre_key=True, pre_key_id=None, signed_pre_key_id=None,
  kyber_pre_key_id=None, kyber_last_resort=False) -> PreKeyBundle``. Ids auto-increment from 1.
  One-time Kyber prekeys are deleted when used; ``kyber_last_resort=True`` keeps it.
* ``process_bundle(local, remote, bundle)``: libsignal's session builder. It verifies both
  prekey signatures itself, so a bundle signed by Parley that libsignal rejects raises
  :class:`LibsignalError` (message ``"invalid signature detected"``).
* ``encrypt(local, remote, plaintext) -> Ciphertext`` (``type`` 3 = PreKeySignalMessage until the
  first reply is decrypted, then 2 = SignalMessage).
* ``decrypt(local, remote, type, body) -> bytes``; raises :class:`LibsignalError` with
  libsignal's message for any rejection (bad MAC, duplicate, untrusted identity, ...). A bad
  input never kills the peer.
* ``sign(local_or_private_key, message) -> bytes`` (libsignal XEdDSA) and
  ``verify(public_key, message, signature) -> bool`` (libsignal's verifier: the one Parley's
  signatures must pass).
* ``generate_key_pair() -> (private, public)``, ``public_key(private) -> bytes``,
  ``agree(private, public) -> bytes`` (X25519), ``hkdf(length, ikm, info, salt) -> bytes``.
* ``parse_message(type, body) -> dict``: libsignal's view of a message (version, counter,
  ``pq_ratchet`` bytes, prekey ids, ...), useful to compare wire encodings.
* ``session_info(local, remote) -> dict``, ``session_record(local, remote) -> bytes | None``
  (libsignal's serialized record), ``archive_session``, ``delete_session``,
  ``remote_identity(local, remote) -> bytes | None``, ``kyber_prekeys_used(local)``.
* ``bench(kind, n, size=256) -> dict`` with ``kind`` in ``symmetric | dh | setup`` (timed in Node).

* ``new_identity(prefix="user", device_id=1) -> Identity``: a fresh name, for shared peers.
* ``request(op, **fields) -> dict``: a raw request (see peer.js), for anything not wrapped.

Fixtures (tests/interop/conftest.py): ``libsignal_090``, ``libsignal_current`` (session-scoped
peers) and ``libsignal`` (parametrized over both). Identities live as long as the peer process,
so tests sharing a peer should use ``new_identity``.

Errors: :class:`LibsignalError` (``.message`` is libsignal's text, ``.name`` its error class such
as ``DuplicatedMessage`` or ``UntrustedIdentity``, ``.log`` the libsignal warnings/errors logged
while handling the failed request: libsignal's message is often generic and the log names the
real reason; ``str(error)`` includes both). :class:`PeerCrashedError` if the process dies or
times out. ``LIBSIGNAL_LOG=1`` (or ``debug``/``trace``) also prints libsignal's log on stderr.

SPQR (observed with these packages; pinned by ``test_peer_selftest.py``)
    * Both 0.90.0 and 0.103.0 start SPQR v1 ("triple ratchet") in every session they create or
      accept; 0.90 ↔ 0.90, 0.103 ↔ 0.103 and both cross-version directions hold full two-way
      conversations, and every message (PreKey or Whisper) carries a non-empty ``pq_ratchet``
      (field 5): 52 bytes in the first messages seen, 8 in the first replies.
    * The bundle has no SPQR part: 0.103 processes any PQXDH bundle (with or without a one-time
      EC prekey) and produces PreKey messages (type 3), with ``pq_ratchet`` set.
    * 0.103 rejects any incoming message whose ``pq_ratchet`` is missing, PreKey or Whisper,
      *before* checking the MAC. The raised message is generic (``"invalid PreKey message:
      decryption failed"``); the reason, ``"post-quantum ratchet error: Minimum version"``, is in
      ``LibsignalError.log`` (and so in ``str(error)``). A Parley client without SPQR therefore
      cannot send anything 0.103 accepts. Parley sends SPQR v1 in every message since issue
      13; ``test_spqr_interop.py`` holds long conversations with both versions in both roles.
    * 0.90 does not complain about a missing ``pq_ratchet``: it goes on to the MAC check (a
      stripped libsignal message then fails with ``MAC verification failed``), i.e. it is the
      version that can talk to a peer without SPQR.
    * Not checked here (no SPQR-less sender exists on this side): whether a 0.90 session really
      downgrades for a whole conversation, and which of 0.103's messages a peer without SPQR can
      decrypt. Those are exactly what Parley's interop tests will show.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

__all__ = [
    "PEER_DIR",
    "V090",
    "VCURRENT",
    "Address",
    "Ciphertext",
    "Identity",
    "LibsignalError",
    "LibsignalPeer",
    "NodeMissingError",
    "PeerCrashedError",
    "PeerInstallError",
    "PreKeyBundle",
    "ensure_installed",
    "node_available",
]

PEER_DIR: Final = Path(__file__).resolve().parent / "peer"
V090: Final = "0.90"
VCURRENT: Final = "current"

MESSAGE_TYPE_WHISPER: Final = 2
MESSAGE_TYPE_PREKEY: Final = 3

_PACKAGES: Final = ("libsignal-090", "libsignal-current")
_INSTALL_TIMEOUT_S: Final = 600.0
_STARTUP_TIMEOUT_S: Final = 30.0
_DEFAULT_TIMEOUT_S: Final = 60.0


class LibsignalError(Exception):
    """libsignal (or the peer) rejected a request; ``message`` is libsignal's own text."""

    def __init__(self, op: str, message: str, name: str = "", log: list[str] | None = None):
        self.op = op
        self.message = message
        self.name = name
        self.log = log or []
        text = f"{op}: {name + ': ' if name else ''}{message}"
        if self.log:
            text += "\nlibsignal log:\n  " + "\n  ".join(self.log)
        super().__init__(text)


class PeerCrashedError(RuntimeError):
    """The Node process exited, or did not answer in time."""


class NodeMissingError(RuntimeError):
    """``node`` (or ``npm``) is not on PATH."""


class PeerInstallError(RuntimeError):
    """``npm ci`` / ``npm install`` failed; the message carries npm's output."""


@dataclass(frozen=True)
class Address:
    """A libsignal protocol address: name + device id."""

    name: str
    device_id: int


@dataclass(frozen=True)
class Identity:
    """An identity held inside a peer process."""

    name: str
    device_id: int
    identity_key: bytes  # 33 bytes, 0x05 || X25519
    identity_private: bytes  # 32 bytes
    registration_id: int

    @property
    def address(self) -> Address:
        return Address(self.name, self.device_id)


@dataclass(frozen=True)
class PreKeyBundle:
    """A prekey bundle, all keys and signatures in libsignal's serialized form."""

    registration_id: int
    device_id: int
    pre_key_id: int | None
    pre_key: bytes | None  # 33 bytes
    signed_pre_key_id: int
    signed_pre_key: bytes  # 33 bytes
    signed_pre_key_signature: bytes  # 64 bytes, XEdDSA over signed_pre_key (33 bytes)
    kyber_pre_key_id: int
    kyber_pre_key: bytes  # 1569 bytes, 0x08 || Kyber1024
    kyber_pre_key_signature: bytes  # 64 bytes, XEdDSA over kyber_pre_key (1569 bytes)
    identity_key: bytes  # 33 bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "registration_id": self.registration_id,
            "device_id": self.device_id,
            "pre_key_id": self.pre_key_id,
            "pre_key": None if self.pre_key is None else _b64(self.pre_key),
            "signed_pre_key_id": self.signed_pre_key_id,
            "signed_pre_key": _b64(self.signed_pre_key),
            "signed_pre_key_signature": _b64(self.signed_pre_key_signature),
            "kyber_pre_key_id": self.kyber_pre_key_id,
            "kyber_pre_key": _b64(self.kyber_pre_key),
            "kyber_pre_key_signature": _b64(self.kyber_pre_key_signature),
            "identity_key": _b64(self.identity_key),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PreKeyBundle:
        pre_key_id = d.get("pre_key_id")
        pre_key = d.get("pre_key")
        return cls(
            registration_id=int(d["registration_id"]),
            device_id=int(d["device_id"]),
            pre_key_id=None if pre_key_id is None else int(pre_key_id),
            pre_key=None if pre_key is None else _unb64(pre_key),
            signed_pre_key_id=int(d["signed_pre_key_id"]),
            signed_pre_key=_unb64(d["signed_pre_key"]),
            signed_pre_key_signature=_unb64(d["signed_pre_key_signature"]),
            kyber_pre_key_id=int(d["kyber_pre_key_id"]),
            kyber_pre_key=_unb64(d["kyber_pre_key"]),
            kyber_pre_key_signature=_unb64(d["kyber_pre_key_signature"]),
            identity_key=_unb64(d["identity_key"]),
        )


@dataclass(frozen=True)
class Ciphertext:
    """An encrypted message: ``type`` 2 (SignalMessage) or 3 (PreKeySignalMessage)."""

    type: int
    body: bytes

    @property
    def is_prekey(self) -> bool:
        return self.type == MESSAGE_TYPE_PREKEY


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def node_available() -> bool:
    """True when both ``node`` and ``npm`` are on PATH."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


def _installed(peer_dir: Path) -> bool:
    return all((peer_dir / "node_modules" / p / "package.json").is_file() for p in _PACKAGES)


_install_lock = threading.Lock()


def ensure_installed(peer_dir: Path = PEER_DIR) -> Path:
    """Install the peer's npm dependencies if ``node_modules`` is missing; return ``peer_dir``.

    Runs ``npm ci`` (``npm install`` when there is no package-lock.json), quietly and
    offline-cache friendly. Raises :class:`NodeMissingError` without node/npm and
    :class:`PeerInstallError` (with npm's output) when the install fails.
    """
    with _install_lock:
        if _installed(peer_dir):
            return peer_dir
        npm = shutil.which("npm")
        if shutil.which("node") is None or npm is None:
            raise NodeMissingError("node and npm must be on PATH to run the libsignal peer")
        sub = "ci" if (peer_dir / "package-lock.json").is_file() else "install"
        cmd = [npm, sub, "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            proc = subprocess.run(
                cmd,
                cwd=peer_dir,
                capture_output=True,
                text=True,
                timeout=_INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise PeerInstallError(
                f"`{' '.join(cmd)}` in {peer_dir} timed out after {_INSTALL_TIMEOUT_S:.0f}s"
            ) from e
        if proc.returncode != 0 or not _installed(peer_dir):
            raise PeerInstallError(
                f"`{' '.join(cmd)}` in {peer_dir} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}".rstrip()
            )
        return peer_dir


LocalRef = Identity | Address


def _local(ref: LocalRef) -> dict[str, Any]:
    return {"name": ref.name, "device_id": ref.device_id}


def _remote(ref: Address | Identity) -> dict[str, Any]:
    return {"remote_name": ref.name, "remote_device_id": ref.device_id}


class LibsignalPeer:
    """A running ``node peer.js <version>``; use as a context manager (or call ``close()``)."""

    def __init__(
        self,
        version: str = V090,
        *,
        timeout: float = _DEFAULT_TIMEOUT_S,
        peer_dir: Path = PEER_DIR,
        env: dict[str, str] | None = None,
    ) -> None:
        ensure_installed(peer_dir)
        node = shutil.which("node")
        if node is None:
            raise NodeMissingError("node is not on PATH")
        self.version = version
        self.timeout = timeout
        self._next_id = 0
        self._names = itertools.count(1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._proc = subprocess.Popen(
            [node, str(peer_dir / "peer.js"), version],
            cwd=peer_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # inherited: libsignal's log (LIBSIGNAL_LOG=1) shows up in test output
            text=True,
            encoding="utf-8",
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        ready = self._receive("ready", _STARTUP_TIMEOUT_S)
        self.libsignal_version: str = str(ready.get("libsignal_version", ""))
        self.package: str = str(ready.get("package", ""))

    # -- plumbing -------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self, op: str, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise PeerCrashedError(f"libsignal peer did not answer {op!r} in {timeout}s") from None
        if line is None:
            code = self._proc.wait()
            raise PeerCrashedError(f"libsignal peer exited (code {code}) during {op!r}")
        resp: dict[str, Any] = json.loads(line)
        return resp

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one raw request; return the response dict or raise :class:`LibsignalError`."""
        if self._proc.poll() is not None or self._proc.stdin is None:
            raise PeerCrashedError(f"libsignal peer is not running (exit {self._proc.returncode})")
        self._next_id += 1
        rid = self._next_id
        try:
            self._proc.stdin.write(json.dumps({"id": rid, "op": op, **fields}) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise PeerCrashedError(f"libsignal peer stdin closed during {op!r}: {e}") from e
        resp = self._receive(op, self.timeout if timeout is None else timeout)
        if resp.get("id") != rid:
            raise PeerCrashedError(f"out-of-sync response to {op!r}: {resp!r}")
        if not resp.get("ok"):
            raise LibsignalError(
                op,
                str(resp.get("error", "")),
                str(resp.get("error_name", "")),
                [str(x) for x in resp.get("log") or []],
            )
        return resp

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> LibsignalPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- ops ------------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        return self.request("hello")

    def new_identity(self, prefix: str = "user", device_id: int = 1) -> Identity:
        """Create an identity under a fresh name (``prefix-N``): handy with shared peers."""
        return self.create_identity(f"{prefix}-{next(self._names)}", device_id)

    def create_identity(
        self,
        name: str,
        device_id: int = 1,
        *,
        registration_id: int | None = None,
        identity_private: bytes | None = None,
    ) -> Identity:
        r = self.request(
            "create_identity",
            name=name,
            device_id=device_id,
            registration_id=registration_id,
            identity_private=None if identity_private is None else _b64(identity_private),
        )
        return Identity(
            name=name,
            device_id=device_id,
            identity_key=_unb64(r["identity_key"]),
            identity_private=_unb64(r["identity_private"]),
            registration_id=int(r["registration_id"]),
        )

    def generate_bundle(
        self,
        local: LocalRef,
        *,
        include_pre_key: bool = True,
        pre_key_id: int | None = None,
        signed_pre_key_id: int | None = None,
        kyber_pre_key_id: int | None = None,
        kyber_last_resort: bool = False,
    ) -> PreKeyBundle:
        r = self.request(
            "generate_bundle",
            **_local(local),
            include_pre_key=include_pre_key,
            pre_key_id=pre_key_id,
            signed_pre_key_id=signed_pre_key_id,
            kyber_pre_key_id=kyber_pre_key_id,
            kyber_last_resort=kyber_last_resort,
        )
        return PreKeyBundle.from_json(r["bundle"])

    def process_bundle(
        self, local: LocalRef, remote: Address | Identity, bundle: PreKeyBundle
    ) -> None:
        self.request("process_bundle", **_local(local), **_remote(remote), bundle=bundle.to_json())

    def encrypt(self, local: LocalRef, remote: Address | Identity, plaintext: bytes) -> Ciphertext:
        r = self.request("encrypt", **_local(local), **_remote(remote), plaintext=_b64(plaintext))
        return Ciphertext(type=int(r["type"]), body=_unb64(r["body"]))

    def decrypt(
        self, local: LocalRef, remote: Address | Identity, type: int | Ciphertext, body: bytes = b""
    ) -> bytes:
        """Decrypt ``(type, body)``; a :class:`Ciphertext` may be passed as ``type`` alone."""
        if isinstance(type, Ciphertext):
            body = type.body
            type = type.type
        r = self.request("decrypt", **_local(local), **_remote(remote), type=type, body=_b64(body))
        return _unb64(r["plaintext"])

    def session_info(self, local: LocalRef, remote: Address | Identity) -> dict[str, Any]:
        return self.request("session_info", **_local(local), **_remote(remote))

    def session_record(self, local: LocalRef, remote: Address | Identity) -> bytes | None:
        """libsignal's serialized session record (``SessionRecord.serialize``), or None."""
        r = self.request("session_record", **_local(local), **_remote(remote))["record"]
        return None if r is None else _unb64(r)

    def archive_session(self, local: LocalRef, remote: Address | Identity) -> bool:
        return bool(self.request("archive_session", **_local(local), **_remote(remote))["existed"])

    def delete_session(self, local: LocalRef, remote: Address | Identity) -> bool:
        return bool(self.request("delete_session", **_local(local), **_remote(remote))["existed"])

    def remote_identity(self, local: LocalRef, remote: Address | Identity) -> bytes | None:
        k = self.request("remote_identity", **_local(local), **_remote(remote))["identity_key"]
        return None if k is None else _unb64(k)

    def kyber_prekeys_used(self, local: LocalRef) -> list[dict[str, Any]]:
        used: list[dict[str, Any]] = self.request("kyber_prekeys_used", **_local(local))["used"]
        return used

    def sign(self, key: LocalRef | bytes, message: bytes) -> bytes:
        """XEdDSA-sign with an identity of this peer, or with a raw 32-byte private key."""
        fields = {"private_key": _b64(key)} if isinstance(key, bytes) else _local(key)
        return _unb64(self.request("sign", **fields, message=_b64(message))["signature"])

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        r = self.request(
            "verify",
            public_key=_b64(public_key),
            message=_b64(message),
            signature=_b64(signature),
        )
        return bool(r["valid"])

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        """Return ``(private 32 bytes, public 33 bytes)``."""
        r = self.request("generate_key_pair")
        return _unb64(r["private_key"]), _unb64(r["public_key"])

    def public_key(self, private_key: bytes) -> bytes:
        return _unb64(self.request("public_key", private_key=_b64(private_key))["public_key"])

    def agree(self, private_key: bytes, public_key: bytes) -> bytes:
        r = self.request("agree", private_key=_b64(private_key), public_key=_b64(public_key))
        return _unb64(r["shared_secret"])

    def hkdf(self, length: int, ikm: bytes, info: bytes, salt: bytes | None = None) -> bytes:
        r = self.request(
            "hkdf",
            length=length,
            ikm=_b64(ikm),
            info=_b64(info),
            salt=None if salt is None else _b64(salt),
        )
        return _unb64(r["output"])

    def parse_message(self, type: int | Ciphertext, body: bytes = b"") -> dict[str, Any]:
        if isinstance(type, Ciphertext):
            body = type.body
            type = type.type
        r = self.request("parse_message", type=type, body=_b64(body))
        r.pop("id", None)
        r.pop("ok", None)
        return r

    def bench(self, kind: str, n: int, size: int = 256) -> dict[str, float]:
        r = self.request("bench", timeout=600.0, kind=kind, n=n, size=size)
        return {k: float(r[k]) for k in ("ops", "seconds", "per_second")}
