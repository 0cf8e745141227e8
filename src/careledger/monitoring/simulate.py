"""Replaying MIMIC-II numerics as devices: signed batches over HTTP or a WebSocket."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from careledger.core.keys import KeyPair
from careledger.monitoring import mimic
from careledger.monitoring.device import sign_batch

MINUTE_MS = 60_000


@dataclass
class Totals:
    batches: int = 0
    readings: int = 0
    alerts: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    # device -> the window its first batch of this run went into: above 0, the device already
    # had readings on the ledger, and these were added beside them
    first_window: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, answer: dict[str, Any]) -> None:
        with self.lock:
            if answer.get("status") == "accepted":
                self.first_window.setdefault(str(answer.get("device")), int(answer["window"]))
                self.batches += 1
                self.readings += int(answer["readings"])
                self.alerts += int(answer["alerts"])
            else:
                code = str(answer.get("code", "ERROR"))
                self.refused[code] = self.refused.get(code, 0) + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "readings": self.readings,
            "alerts": self.alerts,
            "refused": dict(self.refused),
        }

    def already(self) -> dict[str, int]:
        """Devices that had readings before this run, and how many windows of them."""
        return {d: w for d, w in sorted(self.first_window.items()) if w > 0}


def _post(client: httpx.Client, device: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def send(envelope: dict[str, Any]) -> dict[str, Any]:
        response = client.post(f"/v1/devices/{device}/readings", content=orjson.dumps(envelope))
        body: dict[str, Any] = response.json()
        if response.status_code >= 400:
            return {"status": "refused", "code": body.get("code"), "detail": body.get("detail")}
        return body

    return send


def run_device(
    url: str,
    device: str,
    key: KeyPair,
    files: Sequence[Path],
    *,
    speed: float,
    per_batch: int,
    first_seq: int,
    totals: Totals,
    websocket: bool = False,
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Send every file's rows as this device, ``per_batch`` minutes a batch, at ``speed``x
    real time (0: as fast as the node takes them)."""
    start_ms = time.time_ns() // 1_000_000
    started = time.monotonic()
    seq = first_seq
    with httpx.Client(base_url=url, timeout=60) as client:
        ws: Any = None
        if websocket:
            from websockets.sync.client import connect

            ws = connect(url.replace("http", "ws", 1) + f"/v1/devices/{device}/stream")
        try:
            send = _post(client, device)
            offset_ms = 0
            for path in files:
                last_minute = 0
                for batch in mimic.batches(
                    path, start_ms=start_ms + offset_ms, per_batch=per_batch
                ):
                    envelope = sign_batch(key, {"device": device, "seq": seq, "compact": batch})
                    seq += 1
                    if speed > 0:
                        due = started + (batch["t0"] - start_ms) / MINUTE_MS * 60 / speed
                        delay = due - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    if ws is not None:
                        ws.send(orjson.dumps(envelope).decode())
                        totals.add(orjson.loads(ws.recv()))
                    else:
                        totals.add(send(envelope))
                    progress()
                    last_minute = (batch["t0"] - start_ms - offset_ms) // MINUTE_MS + per_batch
                offset_ms += last_minute * MINUTE_MS
        finally:
            if ws is not None:
                ws.close()


def count_batches(files: Sequence[Path], per_batch: int) -> int:
    return sum(-(-len(mimic.rows(p)) // per_batch) for p in files)
