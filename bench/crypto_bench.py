"""Benchmark of the protocol core (``python bench/crypto_bench.py``; not a test).

Figures, in operations per second on one core. Every session runs the triple ratchet: each
message also takes SPQR's send and receive steps (docs/spqr.md), so an epoch's ML-KEM key
generation, encapsulation and decapsulation fall on the messages that carry them, as in
libsignal >= 0.92, whose figures these are compared with:

* ``symmetric_msgs_per_s``: encrypt + decrypt of a 256-byte message on an established chain
  (symmetric ratchet step only);
* ``dh_ratchet_msgs_per_s``: encrypt + decrypt when every message turns the conversation
  around, so each decrypt does a DH ratchet step (two X25519 + a key generation);
* ``setups_per_s``: full PQXDH session setups: bundle signature checks, initiator, first
  message encrypt, responder (Kyber decapsulation included) and first message decrypt. The
  responder's prekeys are generated beforehand (that is upload-time work, not setup).

``run()`` returns the figures as a dict so that ``make bench`` can print them next to
libsignal's (the interop peer's ``bench`` op times the same three things in Node).

Each figure is the best of ``REPEATS`` runs: this VM's CPU time is shared and consecutive
runs here differed by up to 40%. Measured on the 2-core machine (Nov 2026, after the
single-core work on ``client/crypto``): symmetric 20-24k msg/s per core (~45k with two
processes), DH step 4.6-5.6k msg/s, setups 900-1,000/s per core (~1,590/s with two
processes). Before that work, in the same minutes: symmetric 12-18k, DH step 3-4.5k,
setups 600-850/s. A setup is bound by native code: 14 X25519 operations (~37 us each
here), two XEdDSA verifications (~65 us), ML-KEM import + encapsulation + decapsulation
(~175 us), about 0.82 ms of its ~1 ms. libsignal through its Node binding (the interop
peer, including its async stores and SPQR): ~1.8-2k symmetric, ~1k DH, 225-330 setups per
second.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from client.crypto.errors import MissingPreKeyError  # noqa: E402
from client.crypto.keys import IdentityKeyPair, KeyPair, KyberKeyPair  # noqa: E402
from client.crypto.pqxdh import PreKeyBundle  # noqa: E402
from client.crypto.session import SessionRecord  # noqa: E402
from client.store import ClientStore  # noqa: E402

MESSAGE = os.urandom(256)
SYMMETRIC_ROUNDS = 10_000
DH_ROUNDS = 2_000
SETUPS = 300
DISK_ROUNDS = 2_000
WORKERS = 2
REPEATS = 3
"""The development VM has two cores; one worker per core measures the parallel rate."""


class _PreKeys:
    """In-memory prekeys for the responder."""

    def __init__(self) -> None:
        self.signed: dict[int, KeyPair] = {}
        self.kyber: dict[int, KyberKeyPair] = {}
        self.one_time: dict[int, KeyPair] = {}

    def signed_pre_key(self, key_id: int) -> KeyPair:
        return self.signed[key_id]

    def kyber_pre_key(self, key_id: int) -> KyberKeyPair:
        return self.kyber[key_id]

    def one_time_pre_key(self, key_id: int) -> KeyPair:
        try:
            return self.one_time.pop(key_id)
        except KeyError:
            raise MissingPreKeyError(f"no one-time prekey {key_id}") from None


def _bundles(identity: IdentityKeyPair, store: _PreKeys, count: int) -> list[PreKeyBundle]:
    signed = KeyPair.generate()
    store.signed[1] = signed
    signed_sig = identity.sign(signed.public_key.serialize())
    out = []
    for i in range(1, count + 1):
        kyber = KyberKeyPair.generate()
        one_time = KeyPair.generate()
        store.kyber[i] = kyber
        store.one_time[i] = one_time
        out.append(
            PreKeyBundle(
                registration_id=2,
                device_id=1,
                pre_key_id=i,
                pre_key=one_time.public_key,
                signed_pre_key_id=1,
                signed_pre_key=signed.public_key,
                signed_pre_key_signature=signed_sig,
                kyber_pre_key_id=i,
                kyber_pre_key=kyber.public_key,
                kyber_pre_key_signature=identity.sign(kyber.public_key.serialize()),
                identity_key=identity.public_key,
            )
        )
    return out


def _pair() -> tuple[SessionRecord, SessionRecord]:
    alice_id, bob_id = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    store = _PreKeys()
    (bundle,) = _bundles(bob_id, store, 1)
    alice, bob = SessionRecord(), SessionRecord()
    alice.process_prekey_bundle(bundle, our_identity=alice_id, our_registration_id=1)
    first = alice.encrypt(b"hello")
    bob.decrypt_prekey_message(
        first.serialized, our_identity=bob_id, our_registration_id=2, prekeys=store
    )
    alice.decrypt(bob.encrypt(b"hi").serialized)
    return alice, bob


class _Party(Protocol):
    """One side of a conversation with one peer device."""

    def encrypt(self, plaintext: bytes) -> bytes: ...

    def decrypt(self, message: bytes) -> bytes: ...


class _InMemory:
    """The session record stays a Python object between messages (no load, no save)."""

    def __init__(self, record: SessionRecord) -> None:
        self.record = record

    def encrypt(self, plaintext: bytes) -> bytes:
        return self.record.encrypt(plaintext).serialized

    def decrypt(self, message: bytes) -> bytes:
        return self.record.decrypt(message)


class _Stored:
    """The reference client's way: the record lives in its store (client/store.py) and every
    message loads it, runs, and saves it back in one transaction, as ``ParleyClient._encrypt``
    and the receive path do (the encrypt side also reads the peer's trusted identity, as
    ``_usable_record`` does; libsignal's store is asked the same on each encrypt)."""

    PEER = "peer-account"

    def __init__(self, record: SessionRecord, path: Path) -> None:
        self.store = ClientStore(path, clock=time.time)
        self.store.store_session(self.PEER, 1, record.to_bytes())

    def _load(self) -> SessionRecord:
        raw = self.store.load_session(self.PEER, 1)
        assert raw is not None
        return SessionRecord.from_bytes(raw)

    def encrypt(self, plaintext: bytes) -> bytes:
        with self.store.transaction():
            record = self._load()
            self.store.identity(self.PEER, 1)
            message = record.encrypt(plaintext).serialized
            self.store.store_session(self.PEER, 1, record.to_bytes())
        return message

    def decrypt(self, message: bytes) -> bytes:
        with self.store.transaction():
            record = self._load()
            plaintext = record.decrypt(message)
            self.store.store_session(self.PEER, 1, record.to_bytes())
        return plaintext


def _exchange(alice: _Party, bob: _Party, rounds: int, turn_around: bool) -> float:
    """Encrypt + decrypt per second: Alice keeps sending (symmetric steps), or with
    ``turn_around`` the sides alternate so every decrypt takes a DH ratchet step."""
    start = time.perf_counter()
    for i in range(rounds):
        sender, receiver = (bob, alice) if turn_around and i % 2 else (alice, bob)
        receiver.decrypt(sender.encrypt(MESSAGE))
    return rounds / (time.perf_counter() - start)


def bench_symmetric(rounds: int = SYMMETRIC_ROUNDS) -> float:
    alice, bob = _pair()
    return _exchange(_InMemory(alice), _InMemory(bob), rounds, turn_around=False)


def bench_dh_ratchet(rounds: int = DH_ROUNDS) -> float:
    alice, bob = _pair()
    return _exchange(_InMemory(alice), _InMemory(bob), rounds, turn_around=True)


def bench_stored(folder: Path, rounds: int, turn_around: bool = False) -> float:
    """As bench_symmetric (or bench_dh_ratchet), with both records in client stores in
    ``folder``: a store on tmpfs costs the SQL and the record's codec but no disk, like
    libsignal's in-memory store; on a disk each message also waits for two fsyncs."""
    alice, bob = _pair()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        a = _Stored(alice, Path(tmp) / "alice.db")
        b = _Stored(bob, Path(tmp) / "bob.db")
        try:
            return _exchange(a, b, rounds, turn_around)
        finally:
            a.store.close()
            b.store.close()


def bench_setup(setups: int = SETUPS) -> float:
    bob_id = IdentityKeyPair.generate()
    store = _PreKeys()
    bundles = _bundles(bob_id, store, setups)
    alice_ids = [IdentityKeyPair.generate() for _ in range(setups)]
    start = time.perf_counter()
    for bundle, alice_id in zip(bundles, alice_ids, strict=True):
        alice, bob = SessionRecord(), SessionRecord()
        alice.process_prekey_bundle(bundle, our_identity=alice_id, our_registration_id=1)
        first = alice.encrypt(MESSAGE)
        bob.decrypt_prekey_message(
            first.serialized, our_identity=bob_id, our_registration_id=2, prekeys=store
        )
    return setups / (time.perf_counter() - start)


def _best(function: Callable[[], float]) -> float:
    """Best of ``REPEATS`` runs: this VM's CPU is shared, and slow outliers are noise from
    outside the process (the usual timeit practice)."""
    return max(function() for _ in range(REPEATS))


def _call(kind: str) -> float:
    return _best(bench_symmetric if kind == "symmetric" else bench_setup)


def _parallel(kind: str) -> float:
    """The same benchmark in ``WORKERS`` processes at once (independent sessions, as a
    server-side or multi-device client would run them); returns the summed throughput."""
    with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
        return float(sum(pool.map(_call, [kind] * WORKERS)))


def memory_folder() -> Path:
    """A memory-backed folder (tmpfs) for the like-for-like stores, else the temporary one."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def run(parallel: bool = True, scale: float = 1.0) -> dict[str, float]:
    """Run the benchmarks and return ``{name: operations per second}``.

    The single-process figures are per core; with ``parallel`` the symmetric and setup
    benchmarks also run in one process per core (``*_2proc``), the machine's throughput.
    ``scale`` multiplies the iteration counts. ``*_stored_memory`` keep the sessions in the
    client's store on tmpfs, loaded and saved around every encrypt and decrypt (the like for
    like of libsignal's store); ``symmetric_msgs_per_s_stored_disk`` has that store on the
    disk at synchronous=FULL, as the reference client runs.
    """

    def n(base: int) -> int:
        return max(10, int(base * scale))

    shm = memory_folder()
    results = {
        "symmetric_msgs_per_s": _best(lambda: bench_symmetric(n(SYMMETRIC_ROUNDS))),
        "dh_ratchet_msgs_per_s": _best(lambda: bench_dh_ratchet(n(DH_ROUNDS))),
        "setups_per_s": _best(lambda: bench_setup(n(SETUPS))),
        "symmetric_msgs_per_s_stored_memory": _best(lambda: bench_stored(shm, n(SYMMETRIC_ROUNDS))),
        "dh_ratchet_msgs_per_s_stored_memory": _best(
            lambda: bench_stored(shm, n(DH_ROUNDS), turn_around=True)
        ),
        "symmetric_msgs_per_s_stored_disk": bench_stored(
            Path(tempfile.gettempdir()), n(DISK_ROUNDS)
        ),
    }
    if parallel:
        results[f"symmetric_msgs_per_s_{WORKERS}proc"] = _parallel("symmetric")
        results[f"setups_per_s_{WORKERS}proc"] = _parallel("setup")
    return results


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:>36}: {value:10,.0f}")
