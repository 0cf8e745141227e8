"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from careledger.ledger.execute import Executed


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tx_admitted = Counter(
            "careledger_tx_admitted", "Transactions admitted for ordering", registry=self.registry
        )
        self.tx_committed = Counter(
            "careledger_tx_committed",
            "Transactions committed, by result",
            ["result"],
            registry=self.registry,
        )
        self.blocks = Counter("careledger_blocks", "Blocks committed", registry=self.registry)
        self.head_height = Gauge(
            "careledger_head_height", "Height of the head", registry=self.registry
        )
        self.log_size = Gauge("careledger_log_size", "Merkle log size", registry=self.registry)
        self.queue_depth = Gauge(
            "careledger_order_queue_depth",
            "Transactions waiting to be ordered",
            registry=self.registry,
        )
        self.fork_alarms = Gauge(
            "careledger_fork_alarms",
            "Peers whose derived header differed from this node's (consortium mode)",
            registry=self.registry,
        )
        self.head_signatures = Gauge(
            "careledger_head_signatures",
            "Cosignatures on the checkpoint of the head (consortium mode)",
            registry=self.registry,
        )
        self.commit_wait = Histogram(
            "careledger_commit_wait_seconds",
            "Admission to durable commit, for wait=true submissions",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

    def on_commit(self, executed: Executed) -> None:
        header = executed.block.header
        rejected = sum(1 for r in executed.receipts.values() if r["result"] != "accepted")
        self.blocks.inc()
        self.tx_committed.labels("accepted").inc(len(executed.receipts) - rejected)
        if rejected:
            self.tx_committed.labels("rejected").inc(rejected)
        self.head_height.set(header.height)
        self.log_size.set(header.log_size)
