"""The Double Ratchet's key schedule, one concept per module (Double Ratchet spec §5.2).

* :mod:`.root_key` — ``KDF_RK``: a DH output moves the root key and starts a chain.
* :mod:`.chain_key` — ``KDF_CK``: a sending or receiving chain step.
* :mod:`.message_keys` — per-message AES/MAC/IV keys and the body cipher.
"""

from client.crypto.ratchet.chain_key import ChainKey
from client.crypto.ratchet.message_keys import MessageKeys
from client.crypto.ratchet.root_key import RootKey

__all__ = ["ChainKey", "MessageKeys", "RootKey"]
