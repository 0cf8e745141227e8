"""Node settings: one object, built explicitly and passed in (no global config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from careledger.errors import ValidationError

NODE_FILE = "node.json"
GENESIS_FILE = "genesis.json"
STORE_FILE = "ledger.sqlite"
VAULT_FILE = "vault.sqlite"
EPCIS_FILE = "epcis.sqlite"
KEYS_DIR = "keys"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    node_name: str
    org: str
    node_key_file: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 2000
    max_wait: float = 0.002
    max_queue: int = 200_000
    max_request_bytes: int = 64 * 1024 * 1024
    max_batch_envelopes: int = 10_000
    token_ttl_seconds: int = 900
    verify_workers: int = 2

    @property
    def store_path(self) -> Path:
        return self.data_dir / STORE_FILE

    @classmethod
    def load(cls, data_dir: Path, **overrides: object) -> Settings:
        """Settings of the node whose directory is ``data_dir`` (written by ``careledger init``)."""
        path = data_dir / NODE_FILE
        if not path.exists():
            raise ValidationError(
                f"{data_dir} is not a CareLedger node directory (no {NODE_FILE}); "
                "run 'careledger init' first",
                code="NOT_A_NODE_DIR",
            )
        try:
            raw = orjson.loads(path.read_bytes())
            base = cls(
                data_dir=data_dir,
                node_name=str(raw["node_name"]),
                org=str(raw["org"]),
                node_key_file=data_dir / str(raw["node_key"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValidationError(f"{path} is malformed: {exc}", code="BAD_NODE_FILE") from None
        values = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**base.__dict__, **values})  # type: ignore[arg-type]
