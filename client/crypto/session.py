"""Double Ratchet sessions and session records (Double Ratchet spec §3, §7; libsignal
``session_cipher.rs``, ``state/session.rs``).

Invariants of this module (numbered so that tests and reviews can point at them):

1. **Commit on success.** Decryption works on a copy of the state; the record is replaced
   only after the MAC verified and the body decrypted. A forged, tampered, replayed or
   too-far-ahead message raises and leaves the record byte-identical (``to_bytes()``).
   The copy is cheap because chains and chain keys are never mutated in place: a step
   builds new objects and the copy shares everything it does not touch.
2. **Bounded memory.** At most ``MAX_RECEIVER_CHAINS`` receiving chains (oldest dropped),
   ``MAX_MESSAGE_KEYS`` skipped keys per chain (oldest dropped), a counter may jump at
   most ``MAX_FORWARD_JUMPS`` ahead, and a record keeps ``ARCHIVED_STATES_MAX_LENGTH``
   archived sessions.
3. **Prekey messages until acknowledged.** An initiator wraps every message in a
   PreKeySignalMessage until the first message from the peer decrypts.
4. **No I/O.** State goes back to the caller as bytes (``SessionRecord.to_bytes``); prekeys
   come in through the caller's :class:`PreKeySource`.
5. **Triple ratchet.** Every session created now runs SPQR v1 (``docs/spqr.md``) next to the
   Double Ratchet: each message we send carries a ``pq_ratchet`` field and its SPQR key salts
   the message keys; a received field is processed on the copy of invariant 1, so the SPQR
   state is committed only with the Double Ratchet's, after the MAC verified. Sessions
   stored before SPQR (record format 1) keep an empty (version 0) SPQR state and work as
   before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from client.crypto import pqxdh, spqr_braid
from client.crypto import spqr_ratchet as pq
from client.crypto.errors import (
    CryptoError,
    DuplicateMessageError,
    InvalidKeyError,
    InvalidMacError,
    InvalidMessageError,
    InvalidStateError,
    MessageTooFarAheadError,
    NoSessionError,
)
from client.crypto.kdf import message_key_material, ratchet_step
from client.crypto.keys import (
    IdentityKeyPair,
    KeyPair,
    KyberKeyPair,
    PublicKey,
    Rng,
    default_rng,
)
from client.crypto.protobuf import bytes_field, decode_fields, decode_with_repeated, uint_field
from client.crypto.ratchet import ChainKey, RootKey
from client.crypto.ratchet.message_keys import aes_cbc_decrypt, aes_cbc_encrypt
from client.crypto.ratchet.root_key import RATCHET_INFO
from client.crypto.spqr_components import CODE as SPQR_CODE
from client.crypto.spqr_components import KEM as SPQR_KEM
from client.crypto.trace import NO_TRACE, EventKind, TraceEvent, Tracer, TraceValue
from client.crypto.wire import (
    CIPHERTEXT_MESSAGE_CURRENT_VERSION,
    CiphertextMessageType,
    PreKeySignalMessage,
    SignalMessage,
    encode_signal_message,
)

__all__ = [
    "ARCHIVED_STATES_MAX_LENGTH",
    "MAX_FORWARD_JUMPS",
    "MAX_MESSAGE_KEYS",
    "MAX_RECEIVER_CHAINS",
    "STATE_FORMAT_VERSION",
    "CiphertextMessage",
    "PendingPreKey",
    "PreKeyDecryptResult",
    "PreKeySource",
    "ReceiverChain",
    "SenderChain",
    "SessionRecord",
    "SessionState",
    "initialize_initiator_state",
    "initialize_responder_state",
]

MAX_FORWARD_JUMPS: Final = 25_000
"""libsignal ``MAX_FORWARD_JUMPS``: a counter more than this far ahead is refused, so a peer
cannot make us derive (and store) an unbounded number of keys."""
MAX_MESSAGE_KEYS: Final = 2_000
"""libsignal ``MAX_MESSAGE_KEYS``: skipped keys kept per receiving chain; the oldest are
dropped first. Enough for any real out-of-order delivery; more would only add risk."""
MAX_RECEIVER_CHAINS: Final = 5
"""libsignal ``MAX_RECEIVER_CHAINS``: older chains (and their skipped keys) are dropped."""
ARCHIVED_STATES_MAX_LENGTH: Final = 40
"""libsignal ``ARCHIVED_STATES_MAX_LENGTH``: archived sessions kept for late messages."""
STATE_FORMAT_VERSION: Final = 2
"""Version of :meth:`SessionRecord.to_bytes`. Bump it on any incompatible change and keep
reading every older version (tests/crypto/fixtures holds a v1 and a v2 record). 2 added each
session's SPQR state; a version-1 record's sessions read as SPQR version 0 (none)."""
READABLE_FORMAT_VERSIONS: Final = (1, 2)


class ReceiverChain:
    """A receiving chain: the peer's ratchet key, our chain key, and skipped message-key
    seeds by counter (insertion-ordered, oldest first). Treated as immutable (invariant 1)."""

    __slots__ = ("chain_key", "message_keys", "ratchet_key")

    def __init__(
        self, ratchet_key: PublicKey, chain_key: ChainKey, message_keys: dict[int, bytes]
    ) -> None:
        self.ratchet_key = ratchet_key
        self.chain_key = chain_key
        self.message_keys = message_keys

    def __repr__(self) -> str:
        return (
            f"ReceiverChain(ratchet_key={self.ratchet_key!r}, index={self.chain_key.index},"
            f" skipped={len(self.message_keys)})"
        )


class SenderChain:
    """Our current ratchet key pair and sending chain key. Treated as immutable."""

    __slots__ = ("chain_key", "ratchet_key")

    def __init__(self, ratchet_key: KeyPair, chain_key: ChainKey) -> None:
        self.ratchet_key = ratchet_key
        self.chain_key = chain_key

    def __repr__(self) -> str:
        key = self.ratchet_key.public_key
        return f"SenderChain(ratchet_key={key!r}, index={self.chain_key.index})"


@dataclass(frozen=True, repr=False)
class PendingPreKey:
    """What an initiator repeats in every PreKeySignalMessage until the first reply."""

    pre_key_id: int | None
    signed_pre_key_id: int
    kyber_pre_key_id: int
    kyber_ciphertext: bytes
    base_key: PublicKey

    def __repr__(self) -> str:
        return (
            f"PendingPreKey(pre_key_id={self.pre_key_id},"
            f" signed_pre_key_id={self.signed_pre_key_id},"
            f" kyber_pre_key_id={self.kyber_pre_key_id}, base_key={self.base_key!r})"
        )


class SessionState:
    """One Double Ratchet session with one device of the peer."""

    __slots__ = (
        "alice_base_key",
        "is_initiator",
        "local_identity",
        "local_registration_id",
        "pending_pre_key",
        "pqr_auth_key",
        "previous_counter",
        "receiver_chains",
        "remote_identity",
        "remote_registration_id",
        "root_key",
        "sender_chain",
        "spqr",
        "version",
    )

    def __init__(
        self,
        *,
        local_identity: PublicKey,
        remote_identity: PublicKey,
        root_key: RootKey,
        sender_chain: SenderChain,
        receiver_chains: tuple[ReceiverChain, ...] = (),
        previous_counter: int = 0,
        pending_pre_key: PendingPreKey | None = None,
        local_registration_id: int = 0,
        remote_registration_id: int = 0,
        alice_base_key: PublicKey,
        is_initiator: bool,
        pqr_auth_key: bytes,
        spqr: pq.SpqrState = pq.VERSION_0,
        version: int = CIPHERTEXT_MESSAGE_CURRENT_VERSION,
    ) -> None:
        self.version = version
        self.local_identity = local_identity
        self.remote_identity = remote_identity
        self.root_key = root_key
        self.sender_chain = sender_chain
        self.receiver_chains = receiver_chains
        self.previous_counter = previous_counter
        self.pending_pre_key = pending_pre_key
        self.local_registration_id = local_registration_id
        self.remote_registration_id = remote_registration_id
        self.alice_base_key = alice_base_key
        self.is_initiator = is_initiator
        self.pqr_auth_key = pqr_auth_key
        self.spqr = spqr

    def copy(self) -> SessionState:
        """A shallow copy: safe because chains are replaced, never mutated (invariant 1)."""
        new = SessionState.__new__(SessionState)
        new.version = self.version
        new.local_identity = self.local_identity
        new.remote_identity = self.remote_identity
        new.root_key = self.root_key
        new.sender_chain = self.sender_chain
        new.receiver_chains = self.receiver_chains
        new.previous_counter = self.previous_counter
        new.pending_pre_key = self.pending_pre_key
        new.local_registration_id = self.local_registration_id
        new.remote_registration_id = self.remote_registration_id
        new.alice_base_key = self.alice_base_key
        new.is_initiator = self.is_initiator
        new.pqr_auth_key = self.pqr_auth_key
        new.spqr = self.spqr
        return new

    def __repr__(self) -> str:
        return (
            f"SessionState(remote_identity={self.remote_identity!r}, sender={self.sender_chain!r},"
            f" receivers={len(self.receiver_chains)}, pending_pre_key="
            f"{self.pending_pre_key is not None})"
        )

    # --- encryption -----------------------------------------------------------------

    def encrypt(
        self, plaintext: bytes, tracer: Tracer = NO_TRACE, rng: Rng = default_rng
    ) -> CiphertextMessage:
        """Encrypt one message with the sending chain and step it (Double Ratchet §3.4
        RatchetEncrypt), after SPQR's send step, whose key salts the message keys (triple
        ratchet, docs/spqr.md "One message, end to end"). Mutates this state: encryption
        cannot fail half-way. ``rng`` feeds SPQR's ML-KEM key generation and encapsulation."""
        spqr_state, pq_ratchet, pq_key = pq.send(self.spqr, kem=SPQR_KEM, code=SPQR_CODE, rng=rng)
        if tracer is not NO_TRACE:
            _trace_spqr(
                tracer,
                EventKind.SPQR_SEND,
                self.spqr,
                spqr_state,
                pq_ratchet,
                pq_key,
                self.sender_chain.ratchet_key.public_key,
                self.sender_chain.chain_key.index,
            )
        self.spqr = spqr_state
        chain = self.sender_chain
        ck = chain.chain_key
        seed, next_key, cipher_key, mac_key, iv = ratchet_step(ck.key, pq_key)
        next_ck = ChainKey(next_key, ck.index + 1)
        body = aes_cbc_encrypt(cipher_key, iv, plaintext)
        pending = self.pending_pre_key
        if pending is None and tracer is NO_TRACE:
            # The per-message path: the bytes only, no SignalMessage object.
            serialized = encode_signal_message(
                mac_key,
                chain.ratchet_key.public_key,
                ck.index,
                self.previous_counter,
                body,
                self.local_identity,
                self.remote_identity,
                pq_ratchet,
            )
            self.sender_chain = SenderChain(chain.ratchet_key, next_ck)
            return CiphertextMessage(CiphertextMessageType.WHISPER, serialized)
        message = SignalMessage.create(
            mac_key=mac_key,
            ratchet_key=chain.ratchet_key.public_key,
            counter=ck.index,
            previous_counter=self.previous_counter,
            ciphertext=body,
            sender_identity=self.local_identity,
            receiver_identity=self.remote_identity,
            pq_ratchet=pq_ratchet,
        )
        self.sender_chain = SenderChain(chain.ratchet_key, next_ck)
        prekey_message = (
            None
            if pending is None
            else PreKeySignalMessage(
                registration_id=self.local_registration_id,
                pre_key_id=pending.pre_key_id,
                signed_pre_key_id=pending.signed_pre_key_id,
                kyber_pre_key_id=pending.kyber_pre_key_id,
                kyber_ciphertext=pending.kyber_ciphertext,
                base_key=pending.base_key,
                identity_key=self.local_identity,
                message=message,
            )
        )
        self._trace_encrypt(
            tracer,
            ck,
            seed,
            next_ck,
            (cipher_key, mac_key, iv, pq_key),
            plaintext,
            message,
            prekey_message,
        )
        if prekey_message is None:
            return CiphertextMessage(CiphertextMessageType.WHISPER, message.serialized)
        return CiphertextMessage(CiphertextMessageType.PREKEY, prekey_message.serialized)

    def _trace_encrypt(
        self,
        tracer: Tracer,
        ck: ChainKey,
        seed: bytes,
        next_ck: ChainKey,
        keys: tuple[bytes, bytes, bytes, bytes | None],
        plaintext: bytes,
        message: SignalMessage,
        prekey_message: PreKeySignalMessage | None,
    ) -> None:
        """Report one encryption with every input and output (only when tracing)."""
        if tracer is NO_TRACE:
            return
        cipher_key, mac_key, iv, pq_key = keys
        public: dict[str, TraceValue] = {
            "counter": ck.index,
            "previous_counter": message.previous_counter,
            "ratchet_key": message.ratchet_key.serialize(),
            "prekey_message": prekey_message is not None,
            "plaintext_length": len(plaintext),
            "sender_identity": self.local_identity.serialize(),
            "receiver_identity": self.remote_identity.serialize(),
            "ciphertext": message.ciphertext,
            "serialized": message.serialized,
            "pq_ratchet": message.pq_ratchet,
        }
        if prekey_message is not None:
            public.update(_prekey_message_fields(prekey_message))
        tracer(
            TraceEvent(
                EventKind.ENCRYPT,
                public,
                {
                    "chain_key": ck.key,
                    "message_key_seed": seed,
                    "next_chain_key": next_ck.key,
                    **({"pq_salt": pq_key} if pq_key is not None else {}),
                    "cipher_key": cipher_key,
                    "mac_key": mac_key,
                    "iv": iv,
                    "plaintext": plaintext,
                },
            )
        )

    # --- decryption -----------------------------------------------------------------

    def decrypt(
        self, message: SignalMessage, rng: Rng = default_rng, tracer: Tracer = NO_TRACE
    ) -> tuple[SessionState, bytes]:
        """Decrypt with this state (Double Ratchet §3.5 RatchetDecrypt) without changing it.

        Returns:
            ``(the new state to commit, plaintext)``.

        Raises:
            DuplicateMessageError: the counter's key was already used (replay).
            MessageTooFarAheadError: more than ``MAX_FORWARD_JUMPS`` ahead.
            InvalidMacError: MAC mismatch (forged or tampered).
            InvalidMessageError: version mismatch, undecryptable body.
        """
        if message.serialized[0] >> 4 != self.version:
            raise InvalidMessageError("message version does not match the session version")
        new = self.copy()
        their_key = message.ratchet_key
        their_bytes = their_key._serialized
        chains = new.receiver_chains
        position = -1
        for i, chain in enumerate(chains):
            if chain.ratchet_key._serialized == their_bytes:
                position = i
                break
        if position < 0:
            # Fail cheap before the DH step: too far ahead is known from the counter alone.
            if message.counter > MAX_FORWARD_JUMPS:
                raise MessageTooFarAheadError(
                    f"counter {message.counter} on a new chain exceeds {MAX_FORWARD_JUMPS}"
                )
            new._dh_ratchet(their_key, rng, tracer)
            chains = new.receiver_chains
            position = len(chains) - 1
        chain = chains[position]
        ck = chain.chain_key
        counter = message.counter
        skipped = chain.message_keys
        seed = b""
        if ck.index > counter:
            stored = skipped.get(counter)
            if stored is None:
                raise DuplicateMessageError(
                    f"message {counter} was already received (chain is at {ck.index})"
                )
            seed = stored
            skipped = dict(skipped)
            del skipped[counter]
            next_ck = ck
            step = False
            if tracer is not NO_TRACE:
                tracer(
                    TraceEvent(
                        EventKind.SKIPPED_KEY_USED,
                        {"counter": counter, "ratchet_key": their_key.serialize()},
                        {"message_key_seed": seed},
                    )
                )
        else:
            jump = counter - ck.index
            if jump > MAX_FORWARD_JUMPS:
                raise MessageTooFarAheadError(
                    f"message {counter} is {jump} ahead of the chain (limit {MAX_FORWARD_JUMPS})"
                )
            if jump:
                skipped = dict(skipped)
                while ck.index < counter:
                    skipped_seed, following = ck.step()
                    skipped[ck.index] = skipped_seed
                    if tracer is not NO_TRACE:
                        tracer(
                            TraceEvent(
                                EventKind.SKIPPED_KEY_STORED,
                                {"counter": ck.index, "ratchet_key": their_key.serialize()},
                                {
                                    "chain_key": ck.key,
                                    "message_key_seed": skipped_seed,
                                    "next_chain_key": following.key,
                                },
                            )
                        )
                    if len(skipped) > MAX_MESSAGE_KEYS:
                        oldest = next(iter(skipped))
                        del skipped[oldest]
                        if tracer is not NO_TRACE:
                            tracer(TraceEvent(EventKind.SKIPPED_KEY_DROPPED, {"counter": oldest}))
                    ck = following
            step = True
        # SPQR's receive step, on the copy: committed below only if the MAC verifies.
        spqr_state, pq_salt = pq.receive(new.spqr, message.pq_ratchet, kem=SPQR_KEM, code=SPQR_CODE)
        if tracer is not NO_TRACE:
            _trace_spqr(
                tracer,
                EventKind.SPQR_RECEIVE,
                new.spqr,
                spqr_state,
                message.pq_ratchet,
                pq_salt,
                their_key,
                counter,
            )
        if step:
            seed, next_key, cipher_key, mac_key, iv = ratchet_step(ck.key, pq_salt)
            next_ck = ChainKey(next_key, ck.index + 1)
        else:
            cipher_key, mac_key, iv = message_key_material(seed, pq_salt)
        if not message.verify_mac(mac_key, new.remote_identity, new.local_identity):
            raise InvalidMacError("message MAC does not verify")
        plaintext = aes_cbc_decrypt(cipher_key, iv, message.ciphertext)
        new.spqr = spqr_state
        updated = ReceiverChain(their_key, next_ck, skipped)
        new.receiver_chains = (*chains[:position], updated, *chains[position + 1 :])
        # Invariant 3: the peer answered, so the session is acknowledged.
        new.pending_pre_key = None
        if tracer is not NO_TRACE:
            tracer(
                TraceEvent(
                    EventKind.DECRYPT,
                    {
                        "counter": counter,
                        "previous_counter": message.previous_counter,
                        "ratchet_key": their_key.serialize(),
                        "chain_index_after": next_ck.index,
                        "skipped_keys_in_chain": len(skipped),
                        "from_skipped_key": not step,
                        "sender_identity": new.remote_identity.serialize(),
                        "receiver_identity": new.local_identity.serialize(),
                        "ciphertext": message.ciphertext,
                        "serialized": message.serialized,
                        "pq_ratchet": message.pq_ratchet,
                    },
                    {
                        **({"chain_key": ck.key, "next_chain_key": next_ck.key} if step else {}),
                        "message_key_seed": seed,
                        **({"pq_salt": pq_salt} if pq_salt is not None else {}),
                        "cipher_key": cipher_key,
                        "mac_key": mac_key,
                        "iv": iv,
                        "plaintext": plaintext,
                    },
                )
            )
        return new, plaintext

    def _dh_ratchet(self, their_key: PublicKey, rng: Rng, tracer: Tracer) -> None:
        """Double Ratchet §3.5 DHRatchet, on a copy: a receiving chain from
        ``DH(our current ratchet key, theirs)``, then a fresh ratchet key and sending chain."""
        sender = self.sender_chain
        root = self.root_key
        root1, receive_ck, dh_receive = root.create_chain(their_key, sender.ratchet_key.private_key)
        our_new = KeyPair.generate(rng)
        root2, send_ck, dh_send = root1.create_chain(their_key, our_new.private_key)
        chains = (*self.receiver_chains, ReceiverChain(their_key, receive_ck, {}))
        if len(chains) > MAX_RECEIVER_CHAINS:
            chains = chains[-MAX_RECEIVER_CHAINS:]
        self.receiver_chains = chains
        self.root_key = root2
        # libsignal records the index of the last message sent on the old chain.
        self.previous_counter = max(sender.chain_key.index - 1, 0)
        self.sender_chain = SenderChain(our_new, send_ck)
        if tracer is not NO_TRACE:
            tracer(
                TraceEvent(
                    EventKind.DH_RATCHET,
                    {
                        "their_ratchet_key": their_key.serialize(),
                        "our_new_ratchet_key": our_new.public_key.serialize(),
                        "previous_counter": self.previous_counter,
                        "receiver_chains": len(chains),
                    },
                    {
                        "dh_receive": dh_receive,
                        "dh_send": dh_send,
                        "root_key": root2.key,
                        "receiving_chain_key": receive_ck.key,
                        "sending_chain_key": send_ck.key,
                    },
                )
            )
            _trace_kdf_rk(
                tracer,
                "receiving",
                root,
                sender.ratchet_key,
                their_key,
                dh_receive,
                root1,
                receive_ck,
            )
            _trace_kdf_rk(tracer, "sending", root1, our_new, their_key, dh_send, root2, send_ck)

    # --- serialization ----------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialize (field numbers are this module's own schema, separate from the wire)."""
        sender = self.sender_chain
        out = (
            uint_field(1, self.version)
            + bytes_field(2, self.local_identity.serialize())
            + bytes_field(3, self.remote_identity.serialize())
            + bytes_field(4, self.root_key.key)
            + uint_field(5, self.previous_counter)
            + bytes_field(
                6,
                bytes_field(1, sender.ratchet_key.public_key.serialize())
                + bytes_field(2, sender.ratchet_key.private_key.serialize())
                + bytes_field(3, sender.chain_key.key)
                + uint_field(4, sender.chain_key.index),
            )
        )
        for chain in self.receiver_chains:
            body = (
                bytes_field(1, chain.ratchet_key.serialize())
                + bytes_field(2, chain.chain_key.key)
                + uint_field(3, chain.chain_key.index)
            )
            for counter, seed in chain.message_keys.items():
                body += bytes_field(4, uint_field(1, counter) + bytes_field(2, seed))
            out += bytes_field(7, body)
        pending = self.pending_pre_key
        if pending is not None:
            body = b""
            if pending.pre_key_id is not None:
                body += uint_field(1, pending.pre_key_id)
            body += (
                uint_field(2, pending.signed_pre_key_id)
                + bytes_field(3, pending.base_key.serialize())
                + uint_field(4, pending.kyber_pre_key_id)
                + bytes_field(5, pending.kyber_ciphertext)
            )
            out += bytes_field(8, body)
        out += (
            uint_field(9, self.local_registration_id)
            + uint_field(10, self.remote_registration_id)
            + bytes_field(11, self.alice_base_key.serialize())
        )
        out += bytes_field(12, self.pqr_auth_key) + uint_field(13, int(self.is_initiator))
        spqr_bytes = pq.to_bytes(self.spqr)
        if spqr_bytes:  # absent means version 0, as in a format-1 record
            out += bytes_field(14, spqr_bytes)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionState:
        """Inverse of :meth:`to_bytes`.

        Raises:
            InvalidStateError: corrupt data.
        """
        try:
            f, chains = decode_with_repeated(data, 7)
            s = decode_fields(_b(f, 6))
            receiver_chains = []
            for raw in chains:
                c, keys = decode_with_repeated(raw, 4)
                skipped: dict[int, bytes] = {}
                for raw_key in keys:
                    k = decode_fields(raw_key)
                    skipped[_i(k, 1)] = _b(k, 2)
                receiver_chains.append(
                    ReceiverChain(
                        PublicKey.deserialize(_b(c, 1)), ChainKey(_b(c, 2), _i(c, 3)), skipped
                    )
                )
            pending = None
            if 8 in f:
                p = decode_fields(_b(f, 8))
                pending = PendingPreKey(
                    pre_key_id=_i(p, 1) if 1 in p else None,
                    signed_pre_key_id=_i(p, 2),
                    kyber_pre_key_id=_i(p, 4),
                    kyber_ciphertext=_b(p, 5),
                    base_key=PublicKey.deserialize(_b(p, 3)),
                )
            sender_pair = KeyPair.from_saved(_b(s, 2), _b(s, 1))
            return cls(
                version=_i(f, 1),
                local_identity=PublicKey.deserialize(_b(f, 2)),
                remote_identity=PublicKey.deserialize(_b(f, 3)),
                root_key=RootKey(_b(f, 4)),
                previous_counter=_i(f, 5),
                sender_chain=SenderChain(sender_pair, ChainKey(_b(s, 3), _i(s, 4))),
                receiver_chains=tuple(receiver_chains),
                pending_pre_key=pending,
                local_registration_id=_i(f, 9),
                remote_registration_id=_i(f, 10),
                alice_base_key=PublicKey.deserialize(_b(f, 11)),
                pqr_auth_key=_b(f, 12),
                is_initiator=bool(_i(f, 13)),
                spqr=pq.from_bytes(_b(f, 14)) if 14 in f else pq.VERSION_0,
            )
        except (InvalidMessageError, InvalidKeyError, ValueError, KeyError) as exc:
            raise InvalidStateError(f"corrupt session state: {exc}") from exc


def _b(fields: dict[int, int | bytes], number: int) -> bytes:
    value = fields[number]
    if not isinstance(value, bytes):
        raise InvalidStateError(f"field {number} should be bytes")
    return value


def _i(fields: dict[int, int | bytes], number: int) -> int:
    value = fields[number]
    if not isinstance(value, int):
        raise InvalidStateError(f"field {number} should be an integer")
    return value


class CiphertextMessage:
    """An encrypted message ready for the envelope: its content type (2 = SignalMessage,
    3 = PreKeySignalMessage) and its bytes. (A plain slotted class: one is built per message.)
    """

    __slots__ = ("serialized", "type")

    def __init__(self, type: int, serialized: bytes) -> None:
        self.type = type
        self.serialized = serialized

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CiphertextMessage)
            and other.type == self.type
            and other.serialized == self.serialized
        )

    def __hash__(self) -> int:
        return hash((self.type, self.serialized))

    def __repr__(self) -> str:
        return f"CiphertextMessage(type={self.type}, {len(self.serialized)} bytes)"


class PreKeySource(Protocol):
    """The caller's prekeys, looked up by id (libsignal's ``SignedPreKeyStore`` etc.).

    Each method raises :class:`~client.crypto.errors.MissingPreKeyError` for an unknown id.
    """

    def signed_pre_key(self, key_id: int) -> KeyPair: ...

    def kyber_pre_key(self, key_id: int) -> KyberKeyPair: ...

    def one_time_pre_key(self, key_id: int) -> KeyPair: ...


@dataclass(frozen=True, repr=False)
class PreKeyDecryptResult:
    """Outcome of :meth:`SessionRecord.decrypt_prekey_message`.

    ``used_pre_key_id`` / ``used_kyber_pre_key_id`` tell the caller which one-time prekeys a
    *new* session consumed (to delete them; a last-resort Kyber key is kept by the caller).
    Both are ``None`` when the message belonged to a session we already had.
    """

    plaintext: bytes
    used_pre_key_id: int | None
    used_kyber_pre_key_id: int | None
    signed_pre_key_id: int

    def __repr__(self) -> str:
        return (
            f"PreKeyDecryptResult(used_pre_key_id={self.used_pre_key_id},"
            f" used_kyber_pre_key_id={self.used_kyber_pre_key_id}, plaintext=<hidden>)"
        )


def _new_spqr(auth_key: bytes, *, initiator: bool) -> pq.SpqrState:
    """A new session's SPQR: version 1, minimum version 1 (libsignal >= 0.92's choice, which
    still talks to 0.90: docs/spqr.md "Version negotiation"), with the chain limits equal to
    the Double Ratchet's, as libsignal sets them."""
    return pq.initial_state(
        auth_key, initiator, max_jump=MAX_FORWARD_JUMPS, max_ooo=MAX_MESSAGE_KEYS
    )


def initialize_initiator_state(
    *,
    our_identity: IdentityKeyPair,
    our_registration_id: int,
    bundle: pqxdh.PreKeyBundle,
    secrets: pqxdh.PqxdhSecrets,
    base_key: KeyPair,
    kyber_ciphertext: bytes,
    sending_ratchet_key: KeyPair,
    tracer: Tracer = NO_TRACE,
) -> SessionState:
    """Alice's first state (libsignal's initial sender state): a receiving chain
    ``(SPK_B, CK0)`` and a sending chain from ``KDF_RK(RK0, DH(new, SPK_B))``."""
    root = RootKey(secrets.root_key)
    root1, send_ck, dh_send = root.create_chain(
        bundle.signed_pre_key, sending_ratchet_key.private_key
    )
    state = SessionState(
        local_identity=our_identity.public_key,
        remote_identity=bundle.identity_key,
        root_key=root1,
        sender_chain=SenderChain(sending_ratchet_key, send_ck),
        receiver_chains=(ReceiverChain(bundle.signed_pre_key, ChainKey(secrets.chain_key, 0), {}),),
        pending_pre_key=PendingPreKey(
            pre_key_id=bundle.pre_key_id,
            signed_pre_key_id=bundle.signed_pre_key_id,
            kyber_pre_key_id=bundle.kyber_pre_key_id,
            kyber_ciphertext=kyber_ciphertext,
            base_key=base_key.public_key,
        ),
        local_registration_id=our_registration_id,
        remote_registration_id=bundle.registration_id,
        alice_base_key=base_key.public_key,
        is_initiator=True,
        pqr_auth_key=secrets.pqr_auth_key,
        spqr=_new_spqr(secrets.pqr_auth_key, initiator=True),
    )
    if tracer is not NO_TRACE:
        tracer(
            TraceEvent(
                EventKind.SESSION_INITIALIZED,
                {
                    "role": "initiator",
                    "sending_ratchet_key": sending_ratchet_key.public_key.serialize(),
                    "receiving_ratchet_key": bundle.signed_pre_key.serialize(),
                },
                {"root_key": root1.key, "sending_chain_key": send_ck.key},
            )
        )
        _trace_kdf_rk(
            tracer,
            "sending",
            root,
            sending_ratchet_key,
            bundle.signed_pre_key,
            dh_send,
            root1,
            send_ck,
        )
    return state


def _trace_kdf_rk(
    tracer: Tracer,
    direction: str,
    root: RootKey,
    ours: KeyPair,
    theirs: PublicKey,
    dh_output: bytes,
    next_root: RootKey,
    chain: ChainKey,
) -> None:
    """Report one ``KDF_RK`` half-step with its inputs and outputs (only when tracing)."""
    tracer(
        TraceEvent(
            EventKind.KDF_RK,
            {
                "direction": direction,
                "our_ratchet_key": ours.public_key.serialize(),
                "their_ratchet_key": theirs.serialize(),
                "info": RATCHET_INFO,
            },
            {
                "root_key": root.key,
                "our_ratchet_private": ours.private_key.serialize(),
                "dh_output": dh_output,
                "next_root_key": next_root.key,
                "chain_key": chain.key,
            },
        )
    )


def _trace_spqr(
    tracer: Tracer,
    kind: str,
    before: pq.SpqrState,
    after: pq.SpqrState,
    field: bytes,
    key: bytes | None,
    ratchet_key: PublicKey,
    counter: int,
) -> None:
    """Report one SPQR step (only when tracing): the field sent or received, decoded; the
    Braid state before and after; the SPQR key (secret); and, when an epoch completed here,
    the new chain epoch's root and seeds (secret)."""
    public: dict[str, TraceValue] = {
        "ratchet_key": ratchet_key.serialize(),
        "counter": counter,
        "spqr_version": after.version,
        "pq_ratchet": field,
        "state_before": repr(before.braid) if before.braid is not None else "none",
        "state_after": repr(after.braid) if after.braid is not None else "none",
    }
    if field[:1] == b"\x01":
        message, index = spqr_braid.decode_message(field)
        public.update(
            epoch=message.epoch,
            index=index,
            message_type=message.type.name,
            chunk_index=None if message.chunk is None else message.chunk.index,
        )
    secret = {"spqr_key": key} if key is not None else {}
    tracer(TraceEvent(kind, public, secret))
    old_epoch = before.chain.current_epoch if before.chain is not None else 0
    chain = after.chain
    if chain is not None and chain.current_epoch > old_epoch:
        newest = chain.links[-1]
        tracer(
            TraceEvent(
                EventKind.SPQR_EPOCH,
                {
                    "epoch": chain.current_epoch,
                    "how": "encapsulated, sending the first ct1 chunk"
                    if kind == EventKind.SPQR_SEND
                    else "decapsulated, all of ct2 received",
                    "chain_epochs_kept": len(chain.links),
                    "our_direction": "A2B" if chain.initiator else "B2A",
                },
                {
                    "chain_next_root": chain.next_root,
                    "our_chain_seed": newest.send.next,
                    "their_chain_seed": newest.recv.next,
                },
            )
        )


def _prekey_message_fields(message: PreKeySignalMessage) -> dict[str, TraceValue]:
    """The header fields of a PreKeySignalMessage and its bytes, for the tracer."""
    return {
        "registration_id": message.registration_id,
        "pre_key_id": message.pre_key_id,
        "signed_pre_key_id": message.signed_pre_key_id,
        "kyber_pre_key_id": message.kyber_pre_key_id,
        "kyber_ciphertext": message.kyber_ciphertext,
        "base_key": message.base_key.serialize(),
        "identity_key": message.identity_key.serialize(),
        "message": message.message.serialized,
        "prekey_serialized": message.serialized,
    }


def initialize_responder_state(
    *,
    our_identity: IdentityKeyPair,
    our_registration_id: int,
    signed_pre_key: KeyPair,
    secrets: pqxdh.PqxdhSecrets,
    their_identity: PublicKey,
    their_base_key: PublicKey,
    their_registration_id: int,
    tracer: Tracer = NO_TRACE,
) -> SessionState:
    """Bob's first state: his signed prekey is his first ratchet key, sending chain CK0."""
    state = SessionState(
        local_identity=our_identity.public_key,
        remote_identity=their_identity,
        root_key=RootKey(secrets.root_key),
        sender_chain=SenderChain(signed_pre_key, ChainKey(secrets.chain_key, 0)),
        local_registration_id=our_registration_id,
        remote_registration_id=their_registration_id,
        alice_base_key=their_base_key,
        is_initiator=False,
        pqr_auth_key=secrets.pqr_auth_key,
        spqr=_new_spqr(secrets.pqr_auth_key, initiator=False),
    )
    if tracer is not NO_TRACE:
        tracer(
            TraceEvent(
                EventKind.SESSION_INITIALIZED,
                {
                    "role": "responder",
                    "sending_ratchet_key": signed_pre_key.public_key.serialize(),
                },
                {"root_key": secrets.root_key, "sending_chain_key": secrets.chain_key},
            )
        )
    return state


class SessionRecord:
    """All sessions with one device of the peer: the current one and up to
    ``ARCHIVED_STATES_MAX_LENGTH`` archived ones (newest first), as libsignal keeps them."""

    __slots__ = ("current", "previous")

    def __init__(
        self, current: SessionState | None = None, previous: list[SessionState] | None = None
    ) -> None:
        self.current = current
        self.previous: list[SessionState] = list(previous) if previous else []

    def __repr__(self) -> str:
        return f"SessionRecord(current={self.current!r}, archived={len(self.previous)})"

    # --- session management -------------------------------------------------------------

    def archive_current_state(self) -> None:
        """Move the current session to the archive (newest first, bounded)."""
        if self.current is not None:
            self.previous.insert(0, self.current)
            del self.previous[ARCHIVED_STATES_MAX_LENGTH:]
            self.current = None

    def promote_state(self, state: SessionState) -> None:
        """Archive the current session and make ``state`` current."""
        self.archive_current_state()
        self.current = state

    def process_prekey_bundle(
        self,
        bundle: pqxdh.PreKeyBundle,
        *,
        our_identity: IdentityKeyPair,
        our_registration_id: int,
        rng: Rng = default_rng,
        tracer: Tracer = NO_TRACE,
    ) -> None:
        """Start a new session as initiator from a peer's bundle (PQXDH §3.3).

        The previous session, if any, is archived. Until the peer's first reply decrypts,
        :meth:`encrypt` produces PreKeySignalMessages (invariant 3).

        Raises:
            InvalidSignatureError: a prekey signature is invalid; the record is unchanged.
        """
        result = pqxdh.initiate(bundle, our_identity, rng=rng, tracer=tracer)
        state = initialize_initiator_state(
            our_identity=our_identity,
            our_registration_id=our_registration_id,
            bundle=bundle,
            secrets=result.secrets,
            base_key=result.base_key,
            kyber_ciphertext=result.kyber_ciphertext,
            sending_ratchet_key=KeyPair.generate(rng),
            tracer=tracer,
        )
        if tracer is not NO_TRACE and self.current is not None:
            tracer(TraceEvent(EventKind.SESSION_ARCHIVED, {"archived": len(self.previous) + 1}))
        self.promote_state(state)

    # --- encryption / decryption --------------------------------------------------------

    def encrypt(
        self, plaintext: bytes, *, rng: Rng = default_rng, tracer: Tracer = NO_TRACE
    ) -> CiphertextMessage:
        """Encrypt with the current session (``rng`` feeds SPQR's ML-KEM steps).

        Raises:
            NoSessionError: there is no current session.
        """
        if self.current is None:
            raise NoSessionError("no current session to encrypt with")
        return self.current.encrypt(plaintext, tracer, rng)

    def decrypt(
        self,
        message: SignalMessage | bytes,
        *,
        rng: Rng = default_rng,
        tracer: Tracer = NO_TRACE,
    ) -> bytes:
        """Decrypt a SignalMessage: try the current session, then the archived ones (as
        libsignal). A session that decrypts is committed (and promoted if archived).

        Raises:
            NoSessionError: no session at all.
            DuplicateMessageError: replay of an already-decrypted message.
            MessageTooFarAheadError, InvalidMacError, InvalidMessageError: the error of the
                current session (or of the newest archived one) when no session decrypts.
            UnsupportedVersionError: the bytes are not a version-0x44 message.
        """
        if type(message) is bytes:  # the usual call; the check below is slower
            message = SignalMessage.parse(message)
        elif isinstance(message, bytes | bytearray | memoryview):
            message = SignalMessage.parse(bytes(message))
        first_error: CryptoError | None = None
        if self.current is not None:
            try:
                new, plaintext = self.current.decrypt(message, rng, tracer)
            except DuplicateMessageError:
                raise
            except CryptoError as exc:
                first_error = exc
                self._trace_failure(tracer, exc, "current")
            else:
                self.current = new
                return plaintext
        for index, state in enumerate(self.previous):
            try:
                new, plaintext = state.decrypt(message, rng, tracer)
            except DuplicateMessageError:
                raise
            except CryptoError as exc:
                if first_error is None:
                    first_error = exc
                self._trace_failure(tracer, exc, f"archived[{index}]")
            else:
                del self.previous[index]
                self.promote_state(new)
                return plaintext
        if first_error is None:
            raise NoSessionError("no session to decrypt this message with")
        raise first_error

    @staticmethod
    def _trace_failure(tracer: Tracer, exc: CryptoError, which: str) -> None:
        if tracer is not NO_TRACE:
            tracer(
                TraceEvent(
                    EventKind.DECRYPT_FAILED,
                    {"session": which, "error": type(exc).__name__, "reason": str(exc)},
                )
            )

    def decrypt_prekey_message(
        self,
        message: PreKeySignalMessage | bytes,
        *,
        our_identity: IdentityKeyPair,
        our_registration_id: int,
        prekeys: PreKeySource,
        rng: Rng = default_rng,
        tracer: Tracer = NO_TRACE,
    ) -> PreKeyDecryptResult:
        """Decrypt a PreKeySignalMessage, creating the responder session if it is new
        (PQXDH §3.4). All-or-nothing: the record changes only if the body decrypts.

        Whether to trust ``message.identity_key`` is the caller's (identity store's) call,
        made before or after this; the core only does the cryptography.

        Raises:
            MissingPreKeyError: from ``prekeys`` for an unknown id.
            InvalidMessageError: non-canonical base key, bad Kyber ciphertext, bad MAC ...
            DuplicateMessageError: replay of an already-decrypted message.
        """
        if isinstance(message, bytes | bytearray | memoryview):
            message = PreKeySignalMessage.parse(bytes(message))
        if tracer is not NO_TRACE:
            tracer(TraceEvent(EventKind.PREKEY_MESSAGE_RECEIVED, _prekey_message_fields(message)))
        work = SessionRecord(self.current, self.previous)
        used_pre_key_id: int | None = None
        used_kyber_id: int | None = None
        if not work._promote_matching_session(message.base_key):
            if not message.base_key.is_canonical():
                raise InvalidMessageError("incoming base key is not canonically encoded")
            signed = prekeys.signed_pre_key(message.signed_pre_key_id)
            kyber = prekeys.kyber_pre_key(message.kyber_pre_key_id)
            one_time = (
                prekeys.one_time_pre_key(message.pre_key_id)
                if message.pre_key_id is not None
                else None
            )
            secrets = pqxdh.respond(
                our_identity,
                signed,
                one_time,
                kyber,
                message.identity_key,
                message.base_key,
                message.kyber_ciphertext,
                tracer,
            )
            state = initialize_responder_state(
                our_identity=our_identity,
                our_registration_id=our_registration_id,
                signed_pre_key=signed,
                secrets=secrets,
                their_identity=message.identity_key,
                their_base_key=message.base_key,
                their_registration_id=message.registration_id,
                tracer=tracer,
            )
            work.promote_state(state)
            used_pre_key_id = message.pre_key_id
            used_kyber_id = message.kyber_pre_key_id
        plaintext = work.decrypt(message.message, rng=rng, tracer=tracer)
        self.current, self.previous = work.current, work.previous
        return PreKeyDecryptResult(
            plaintext, used_pre_key_id, used_kyber_id, message.signed_pre_key_id
        )

    def _promote_matching_session(self, base_key: PublicKey) -> bool:
        """If a session was started by this base key (a repeated PreKeySignalMessage), make
        it current and return True (libsignal ``promote_matching_session``)."""
        current = self.current
        if current is not None and current.alice_base_key == base_key:
            return True
        for index, state in enumerate(self.previous):
            if state.alice_base_key == base_key:
                del self.previous[index]
                self.promote_state(state)
                return True
        return False

    # --- serialization ----------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Versioned serialization for the caller's store (format ``STATE_FORMAT_VERSION``)."""
        out = uint_field(1, STATE_FORMAT_VERSION)
        if self.current is not None:
            out += bytes_field(2, self.current.to_bytes())
        for state in self.previous:
            out += bytes_field(3, state.to_bytes())
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionRecord:
        """Read any supported format version.

        Raises:
            InvalidStateError: corrupt data or an unknown (newer) format version.
        """
        try:
            fields, previous_raw = decode_with_repeated(data, 3)
        except InvalidMessageError as exc:
            raise InvalidStateError(f"corrupt session record: {exc}") from exc
        version = fields.get(1)
        if version not in READABLE_FORMAT_VERSIONS:
            raise InvalidStateError(f"unsupported session record format version {version!r}")
        current_raw = fields.get(2)
        if current_raw is not None and not isinstance(current_raw, bytes):
            raise InvalidStateError("corrupt session record: current session")
        current = SessionState.from_bytes(current_raw) if current_raw is not None else None
        return cls(current, [SessionState.from_bytes(raw) for raw in previous_raw])
