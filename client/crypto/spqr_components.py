"""The real ML-KEM-768 and erasure code behind the Braid's two protocols.

Why: :mod:`client.crypto.spqr_braid` drives its KEM and its chunking code through the small
:class:`~client.crypto.spqr_braid.IncrementalKem` and
:class:`~client.crypto.spqr_braid.ErasureCode` protocols, so that it could be written and
tested (with fakes) before the real parts existed. Those now exist
(:mod:`client.crypto.mlkem_incremental`, :mod:`client.crypto.spqr_encoding`), each with its
own API; this module is the thin layer between them, and :data:`KEM` and :data:`CODE` are
what the session passes to :mod:`client.crypto.spqr_ratchet`.

Formats of the opaque values (never sent, stored in the session record only):

* ``dk`` is the 64-byte ML-KEM seed ``d ‖ z`` (FIPS 203 ``KeyGen_internal``): OpenSSL rebuilds
  the private key from it, which is how ``cryptography`` stores ML-KEM keys compactly anyway;
* the encapsulation state is :meth:`EncapsulationState.serialize`'s 98 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cryptography.hazmat.primitives.asymmetric import mlkem

from client.crypto import mlkem_incremental as incremental
from client.crypto import spqr_encoding as encoding
from client.crypto.errors import InvalidKeyError, InvalidMessageError
from client.crypto.spqr_braid import ErasureCode, IncrementalKem, KemKeys, SpqrError

__all__ = ["CODE", "KEM", "Gf65536Code", "MlKem768"]

_SEED_SIZE: Final = 64


class MlKem768:
    """:class:`IncrementalKem` with :mod:`client.crypto.mlkem_incremental` (encapsulation in
    Python) and OpenSSL (key generation, decapsulation)."""

    def generate(self, seed: bytes) -> KemKeys:
        """Key pair from ``d ‖ z``; ``dk`` is that seed (OpenSSL re-expands it)."""
        if len(seed) != _SEED_SIZE:
            raise ValueError(f"ML-KEM key generation takes a {_SEED_SIZE}-byte seed")
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        header, ek = incremental.split_encapsulation_key(
            key.public_key().public_bytes_raw(), from_keygen=True
        )
        return KemKeys(header, ek, bytes(seed))

    def encaps1(self, header: bytes, randomness: bytes) -> tuple[bytes, bytes, bytes]:
        """``(ct1, state, ss)``: the order the Braid's protocol uses."""
        try:
            ct1, shared, state = incremental.encapsulate1(header, randomness)
        except InvalidKeyError as exc:  # only a wrong length, which the Braid never passes
            raise SpqrError(f"ML-KEM header refused: {exc}") from exc
        return ct1, state.serialize(), shared

    def encaps2(self, state: bytes, ek: bytes) -> bytes:
        """``ct2``; the Braid has already checked ``ek`` with :meth:`ek_matches_header`."""
        try:
            return incremental.encapsulate2(incremental.EncapsulationState.deserialize(state), ek)
        except InvalidKeyError as exc:
            raise SpqrError(f"ML-KEM key vector refused: {exc}") from exc

    def decaps(self, dk: bytes, ct1: bytes, ct2: bytes) -> bytes:
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(dk)
        return incremental.decapsulate(key, ct1, ct2)

    def ek_matches_header(self, header: bytes, ek: bytes) -> bool:
        try:
            incremental.check_key_vector(header, ek)
        except InvalidKeyError:
            return False
        return True


class Gf65536Code:
    """:class:`ErasureCode` with :mod:`client.crypto.spqr_encoding` (SPQR's GF(2^16) code).

    The encoder of the last payload is cached: the Braid asks for one chunk per message of
    the same payload, and building the encoder splits the payload into lanes each time.
    """

    def __init__(self) -> None:
        self._encoder: encoding.ChunkEncoder | None = None

    def chunk(self, payload: bytes, index: int) -> bytes:
        encoder = self._encoder
        if encoder is None or encoder.value != payload:
            encoder = self._encoder = encoding.ChunkEncoder(payload)
        return encoder.chunk(index).data

    def decode(self, length: int, chunks: Mapping[int, bytes]) -> bytes:
        decoder = encoding.ChunkDecoder(length)
        value: bytes | None = None
        try:
            for index, data in chunks.items():
                value = decoder.add_chunk(encoding.Chunk(index, data))
        except InvalidMessageError as exc:
            raise SpqrError(f"SPQR chunks do not decode: {exc}") from exc
        if value is None:
            raise SpqrError("SPQR payload decoded from too few chunks")
        return value


KEM: Final[IncrementalKem] = MlKem768()
CODE: Final[ErasureCode] = Gf65536Code()
