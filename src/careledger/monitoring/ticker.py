"""Asks the ledger to judge time for this organisation's patients (``monitoring.tick``).

Silence (no data for M minutes) and escalation (an alert left unacknowledged) depend on time,
which contracts see only as block time. The node of the monitoring organisation commits a
``tick`` when there is something to judge: a patient it watches for silence, or an open alert
that escalates.
"""

from __future__ import annotations

import logging
import threading

from careledger.contracts.monitoring import NAMESPACE as MONITORING
from careledger.contracts.monitoring import open_alerts, watched_devices
from careledger.node import Node

log = logging.getLogger(__name__)


class Ticker:
    def __init__(self, node: Node, interval: float = 30.0) -> None:
        self.node = node
        self.ledger = node.ledger
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitoring-tick", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def due(self) -> bool:
        org = self.node.settings.org
        if watched_devices(self.ledger.state, org):
            return True
        for alert in open_alerts(self.ledger.state, org):
            if alert and alert.get("escalate_after") and alert["status"] == "open":
                return True
        return False

    def tick(self) -> bool:
        """Commit one tick if there is anything to judge; whether one was committed."""
        if not self.due():
            return False
        (receipt,) = self.node.execute([(MONITORING, "tick", {})])
        if receipt["result"] != "accepted":
            log.warning("monitoring tick refused: %s", receipt["code"])
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:
                log.exception("monitoring tick failed")
