"""Off-ledger, encrypted PHI: per-record AES-256-GCM, sealed-box key wrapping, crypto-shredding."""

from careledger.vault.crypto import (
    DATA_KEY_SIZE,
    NONCE_SIZE,
    SALT_SIZE,
    WRAPPED_KEY_SIZE,
    content_hash,
    open_resource,
    record_aad,
    seal_resource,
    unwrap_key,
    wrap_key,
)
from careledger.vault.service import Vault
from careledger.vault.store import SealedRecord, VaultStore

__all__ = [
    "DATA_KEY_SIZE",
    "NONCE_SIZE",
    "SALT_SIZE",
    "WRAPPED_KEY_SIZE",
    "SealedRecord",
    "Vault",
    "VaultStore",
    "content_hash",
    "open_resource",
    "record_aad",
    "seal_resource",
    "unwrap_key",
    "wrap_key",
]
