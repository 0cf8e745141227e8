"""Re-judging a device's anchored windows: do the ledger's alerts follow from the readings?

Alerts are raised by the device owner's node and committed with the window; other nodes agree
on them because they are ledger transactions. This audit is how anyone holding the readings
(the owner's node, or an auditor it gives them to) checks that node: it replays the rules in
force for each window (from the ledger's history of ``monitoring.set_rules``) over the window's
readings, in order, and compares what fires with what the ledger recorded: same rules, same
reading indexes, same times.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from careledger.contracts.monitoring import alert_of, window_of
from careledger.core.alert_rules import check_rules, evaluate
from careledger.ledger.engine import Ledger
from careledger.monitoring.batches import open_batch
from careledger.monitoring.store import ReadingsStore

RulesHistory = dict[
    str, list[tuple[int, int, list[dict[str, Any]]]]
]  # device -> (height, v, rules)


@dataclass
class DeviceAudit:
    device: str
    windows: int = 0
    alerts: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "windows": self.windows,
            "alerts": self.alerts,
            "ok": not self.mismatches,
            "mismatches": self.mismatches,
        }


def rules_history(ledger: Ledger) -> RulesHistory:
    """Every version of every device's rules, with the height it took effect, from the chain."""
    history: RulesHistory = {}
    store = ledger.store
    for height in range(store.head_height() + 1):
        events = [e for e in store.block_events(height) if e.type == "monitoring.rules"]
        if not events:
            continue
        txs = store.block_txs(height)
        for event in events:
            data = orjson.loads(event.data)
            body = orjson.loads(txs[event.tx_index].envelope)["body"]
            args = body["args"]["args"] if body["method"] == "on_behalf" else body["args"]
            history.setdefault(data["device"], []).append(
                (height, int(data["version"]), check_rules(args["rules"]))
            )
    return history


def _rules_at(history: RulesHistory, device: str, version: int, height: int) -> list[Any]:
    if version == 0:
        return []
    found = [r for h, v, r in history.get(device, []) if v == version and h < height]
    return found[-1] if found else []


def compare(expected: Iterable[dict[str, Any]], recorded: Iterable[dict[str, Any]]) -> bool:
    key = ("rule", "index", "at")
    return [tuple(a[k] for k in key) for a in expected] == [
        tuple(a[k] for k in key) for a in recorded
    ]


def audit_devices(
    ledger: Ledger, store: ReadingsStore, devices: Iterable[str]
) -> list[DeviceAudit]:
    history = rules_history(ledger)
    out = []
    for device in devices:
        report = DeviceAudit(device)
        state: dict[str, dict[str, Any]] = {}
        version = -1
        for closed in store.anchored_windows(device):
            held = window_of(ledger.state, device, closed.window)
            if held is None:
                report.mismatches.append({"window": closed.window, "problem": "not on the ledger"})
                continue
            batches = store.batches_of(device, closed.window)
            if any(not batch.wrapped for batch in batches):
                continue  # the patient erased these readings: nothing left to re-judge
            readings = []
            for batch in batches:
                readings += open_batch(batch, ledger.node_key, "custodian")
            rules = _rules_at(history, device, closed.rules_version, held["height"])
            if closed.rules_version != version:
                state, version = {}, closed.rules_version
            carried = evaluate(rules, state, readings)
            # every alert a window names was recorded by the transaction that anchored it
            recorded: list[Any] = [alert_of(ledger.state, a) for a in held["alerts"]]
            expected = [f.as_json() for f in carried]
            if not compare(expected, recorded):
                alone = [f.as_json() for f in evaluate(rules, {}, readings)]
                if not compare(alone, recorded):  # re-judged alone after a rules change?
                    report.mismatches.append(
                        {
                            "window": closed.window,
                            "expected": [
                                {k: a[k] for k in ("rule", "index", "at")} for a in expected
                            ],
                            "recorded": [
                                {k: a[k] for k in ("rule", "index", "at")} for a in recorded
                            ],
                        }
                    )
            report.windows += 1
            report.alerts += len(recorded)
        out.append(report)
    return out
