"""Node settings: one object, built explicitly and passed in (no global config)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from careledger.errors import ValidationError
from careledger.write_budget import Budget

DEFAULT_BUDGET = Budget()

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
    # Ordering: "local" (embedded, one node) or "jetstream" (a consortium on a NATS cluster).
    ordering: str = "local"
    nats_servers: tuple[str, ...] = ()
    nats_replicas: int = 3
    nats_creds: Path | None = None
    nats_nkey_seed: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_max_msgs: int = 0  # stream retention by count (0: keep every batch)
    catchup_signatures: int = 2
    public_url: str = ""  # where peers and clients reach this node's API (the node registry)
    # reverse proxies whose X-Forwarded-* / Forwarded headers are believed (api/forwarded.py)
    trusted_proxies: tuple[str, ...] = ()
    forwarded_headers: str = "x-forwarded"  # the one family believed: or "forwarded" (RFC 7239)
    # Remote monitoring: a window of device readings closes after this long or this many
    # readings (at once when an alert fires); time rules are judged every tick.
    monitoring_window_ms: int = 2000
    monitoring_window_readings: int = 4096
    monitoring_tick_seconds: float = 30.0
    # What one member (not the node itself) may write through /v1/tx: see write_budget.py.
    write_budget: Budget = DEFAULT_BUDGET

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
            fields: dict[str, Any] = {
                "data_dir": data_dir,
                "node_name": str(raw["node_name"]),
                "org": str(raw["org"]),
                "node_key_file": data_dir / str(raw["node_key"]),
                "public_url": str(raw.get("public_url", "")),
                "trusted_proxies": _proxies(raw.get("trusted_proxies")),
                "forwarded_headers": _family(raw.get("forwarded_headers", "x-forwarded")),
                **_ordering(raw.get("ordering"), data_dir),
            }
            if "port" in raw:
                fields["port"] = int(raw["port"])
            fields.update(_monitoring(raw.get("monitoring")))
            if raw.get("write_budget") is not None:
                fields["write_budget"] = _write_budget(raw["write_budget"])
            base = cls(**fields)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"{path} is malformed: {exc}", code="BAD_NODE_FILE") from None
        values = {k: v for k, v in overrides.items() if v is not None}
        merged: dict[str, Any] = {**base.__dict__, **values}
        return cls(**merged)


def _write_budget(raw: object) -> Budget:
    """The optional ``write_budget`` block of node.json: what one member may write via /v1/tx
    (``tx_burst``, ``tx_per_second``, ``bytes_burst``, ``bytes_per_second``)."""
    if not isinstance(raw, dict) or set(raw) - set(Budget.__dataclass_fields__):
        raise ValueError(
            "write_budget is an object of tx_burst, tx_per_second, bytes_burst, bytes_per_second"
        )
    values = {k: float(v) for k, v in raw.items()}
    if any(v <= 0 for v in values.values()):
        raise ValueError("write_budget values are positive")
    return Budget(**values)


def _proxies(raw: object) -> tuple[str, ...]:
    """The optional ``trusted_proxies`` list of node.json: addresses or networks."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ValueError("trusted_proxies is a list of addresses or networks")
    networks(raw)  # each one parses, or the node file is refused
    return tuple(raw)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(trusted: Iterable[str]) -> tuple[Network, ...]:
    """The trusted proxies, parsed (ValueError naming a bad one)."""
    out = []
    for text in trusted:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {text!r} is not an address or network") from None
    return tuple(out)


def _family(raw: object) -> str:
    if raw not in ("x-forwarded", "forwarded"):
        raise ValueError('forwarded_headers is "x-forwarded" or "forwarded"')
    return str(raw)


def _monitoring(raw: object) -> dict[str, object]:
    """The optional ``monitoring`` block of node.json."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("monitoring is an object")
    out: dict[str, object] = {}
    if "window_ms" in raw:
        out["monitoring_window_ms"] = int(raw["window_ms"])
    if "window_readings" in raw:
        out["monitoring_window_readings"] = int(raw["window_readings"])
    if "tick_seconds" in raw:
        out["monitoring_tick_seconds"] = float(raw["tick_seconds"])
    return out


def _ordering(raw: object, data_dir: Path) -> dict[str, object]:
    """The ``ordering`` block of node.json: absent means the embedded orderer."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or raw.get("kind") not in ("local", "jetstream"):
        raise ValueError("ordering.kind must be 'local' or 'jetstream'")
    if raw["kind"] == "local":
        return {}
    servers = raw.get("servers")
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
        raise ValueError("ordering.servers must list NATS URLs")

    def path(name: str) -> Path | None:
        value = raw.get(name)
        return None if value is None else (data_dir / str(value))

    return {
        "ordering": "jetstream",
        "nats_servers": tuple(servers),
        "nats_replicas": int(raw.get("replicas", 3)),
        "nats_creds": path("creds"),
        "nats_nkey_seed": path("nkey_seed"),
        "nats_tls_ca": path("tls_ca"),
        "nats_tls_cert": path("tls_cert"),
        "nats_tls_key": path("tls_key"),
        "nats_max_msgs": int(raw.get("max_msgs", 0)),
        "catchup_signatures": int(raw.get("catchup_signatures", 2)),
    }
