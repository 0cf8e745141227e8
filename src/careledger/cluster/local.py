"""A consortium on one machine: N NATS JetStream servers and N CareLedger nodes on 127.0.0.1.

``cluster up`` builds it in a directory: the first node is the demo (St Mary's), and every other
demo organisation gets a node of its own, started from a copy of the same committed chain and
its own node key, all ordering through one Raft-replicated stream. ``cluster.json`` records
the processes so ``status`` and ``down`` find them again; each process logs beside its data.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from careledger.cluster.natsd import NatsServer, free_ports, specs_for
from careledger.config import GENESIS_FILE, KEYS_DIR, NODE_FILE, STORE_FILE
from careledger.errors import CareLedgerError, ValidationError

CLUSTER_FILE = "cluster.json"
MAX_NODES = 6  # one per demo organisation


@dataclass
class NodeProcess:
    name: str
    org: str
    dir: Path
    port: int
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir.parent / f"{self.dir.name}.log"

    def start(self) -> None:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "careledger.cli",
                    "serve",
                    str(self.dir),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = proc.pid
        self._proc = proc

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = getattr(self, "_proc", None)
            if proc is not None and proc.poll() is not None:
                raise CareLedgerError(
                    f"node {self.name} exited; see {self.log}", code="NODE_START_FAILED"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise CareLedgerError(f"node {self.name} did not start in time", code="NODE_START_FAILED")

    def signal(self, sig: int) -> None:
        if self.pid and _alive(self.pid):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        _wait_gone(self.pid, getattr(self, "_proc", None))

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        self.wait_stopped()

    def wait_stopped(self) -> None:
        """After SIGTERM: until the process has gone, killing it if it outlives the grace."""
        if not _wait_gone(self.pid, getattr(self, "_proc", None), 20):
            self.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a closed SQLite store (the backup API, not a file copy)."""
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def node_config(
    name: str, org: str, nats_urls: list[str], port: int, replicas: int, max_msgs: int = 0
) -> dict[str, Any]:
    ordering: dict[str, Any] = {"kind": "jetstream", "servers": nats_urls, "replicas": replicas}
    if max_msgs:
        ordering["max_msgs"] = max_msgs
    return {
        "node_name": name,
        "org": org,
        "node_key": f"{KEYS_DIR}/{name}.key",
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "ordering": ordering,
    }


class LocalCluster:
    """The processes of a loopback consortium; ``up`` creates, ``load`` finds them again."""

    def __init__(self, base: Path, nats: list[NatsServer], nodes: list[NodeProcess]) -> None:
        self.base = base
        self.nats = nats
        self.nodes = nodes

    @property
    def nats_urls(self) -> list[str]:
        return [n.spec.url for n in self.nats]

    @classmethod
    def create(
        cls,
        base: Path,
        count: int,
        *,
        with_demo_data: bool = True,
        stream_max_msgs: int = 0,
        ruleset: str | None = None,
    ) -> LocalCluster:
        """Write the directories (nothing runs yet)."""
        from careledger import demo
        from careledger.nodedir import init_demo

        if not 1 <= count <= MAX_NODES:
            raise ValidationError(f"--nodes must be 1..{MAX_NODES}", code="BAD_CLUSTER")
        if (base / CLUSTER_FILE).exists():
            raise ValidationError(f"{base} already holds a cluster", code="CLUSTER_EXISTS")
        base.mkdir(parents=True, exist_ok=True)
        replicas = min(3, count)
        ports = free_ports(4 * count)  # NATS client, route and monitor ports, node ports
        specs = specs_for(base, count, ports[: 3 * count])
        node_ports = ports[3 * count :]
        nats = [NatsServer(s, specs) for s in specs]
        urls = [s.url for s in specs]
        first = base / "node-1"
        init_demo(
            first, with_records=with_demo_data, with_supply=with_demo_data, ruleset=ruleset
        ).store.close()
        orgs = {m: o for m, _, o, _ in demo.DEMO_MEMBERS}
        nodes: list[NodeProcess] = []
        for i, name in enumerate(demo.CLUSTER_NODES[:count]):
            node_dir = base / f"node-{i + 1}"
            port = node_ports[i]
            if i > 0:
                (node_dir / KEYS_DIR).mkdir(parents=True)
                key = first / KEYS_DIR / f"{name}.key"
                (node_dir / KEYS_DIR / f"{name}.key").write_bytes(key.read_bytes())
                os.chmod(node_dir / KEYS_DIR / f"{name}.key", 0o600)
                (node_dir / GENESIS_FILE).write_bytes((first / GENESIS_FILE).read_bytes())
                _copy_sqlite(first / STORE_FILE, node_dir / STORE_FILE)
            config = node_config(name, orgs[name], urls, port, replicas, stream_max_msgs)
            (node_dir / NODE_FILE).write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
            nodes.append(NodeProcess(name, orgs[name], node_dir, port))
        cluster = cls(base, nats, nodes)
        cluster.save()
        return cluster

    def save(self) -> None:
        record = {
            "nats": [
                {
                    "name": n.spec.name,
                    "url": n.spec.url,
                    "port": n.spec.port,
                    "cluster_port": n.spec.cluster_port,
                    "monitor_port": n.spec.monitor_port,
                    "store_dir": str(n.spec.store_dir),
                    "pid": n.proc.pid if n.proc is not None else 0,
                }
                for n in self.nats
            ],
            "nodes": [
                {"name": n.name, "org": n.org, "dir": str(n.dir), "port": n.port, "pid": n.pid}
                for n in self.nodes
            ],
        }
        (self.base / CLUSTER_FILE).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, base: Path) -> tuple[LocalCluster, dict[str, Any]]:
        path = base / CLUSTER_FILE
        if not path.exists():
            raise ValidationError(f"{base} holds no cluster (no {CLUSTER_FILE})", code="NO_CLUSTER")
        record = orjson.loads(path.read_bytes())
        from careledger.cluster.natsd import NatsServerSpec

        specs = [
            NatsServerSpec(
                n["name"], n["port"], n["cluster_port"], n["monitor_port"], Path(n["store_dir"])
            )
            for n in record["nats"]
        ]
        nats = [NatsServer(s, specs) for s in specs]
        nodes = [
            NodeProcess(n["name"], n["org"], Path(n["dir"]), n["port"], n["pid"])
            for n in record["nodes"]
        ]
        return cls(base, nats, nodes), record

    def start(self) -> None:
        try:
            for server in self.nats:
                server.start()
            for server in self.nats:
                server.wait_ready()
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_ready()
            self.register_endpoints()
        except BaseException:
            self.stop()
            raise
        finally:
            self.save()

    def register_endpoints(self) -> None:
        """Each organisation's admin records its node's URL in the ledger's node registry
        (once; peers find each other there, e.g. for federated reads)."""
        from careledger import demo
        from careledger.contracts.identity import node_of
        from careledger.keyfile import read_key_file
        from careledger.sdk import Client, RemoteError

        keys = self.nodes[0].dir / KEYS_DIR
        admins = {o: m for m, _, o, r in demo.DEMO_MEMBERS if "admin" in r}
        for node in self.nodes:
            with Client(node.url) as reader:
                try:
                    entry = node_of(reader.state, node.org)
                except RemoteError:
                    entry = None
            if entry is not None and entry.get("endpoint") == node.url:
                continue
            admin = read_key_file(keys / f"{admins[node.org]}.key")[1]
            with Client(node.url, keypair=admin) as client:
                client.call(
                    "identity", "register_node", {"member": node.name, "endpoint": node.url}
                )

    def stop(self) -> None:
        """The nodes first (they flush to the stream), then the NATS servers; within each group
        all at once, so that stopping N processes takes as long as the slowest, not their sum."""
        for group in (self.nodes, self.nats):
            for process in group:
                process.signal(signal.SIGTERM)
            for process in group:
                process.wait_stopped()


def stop_recorded(base: Path) -> int:
    """Stop the processes ``cluster.json`` names (they outlived the CLI that started them)."""
    _, record = LocalCluster.load(base)
    stopped = 0
    # the nodes first (they flush to the stream), then the NATS servers; within each group all
    # at once, so that stopping N processes takes as long as the slowest, not their sum
    for group in (record["nodes"], record["nats"]):
        pids = [int(e.get("pid") or 0) for e in group]
        running = [pid for pid in pids if pid and _alive(pid)]
        for pid in running:
            os.killpg(pid, signal.SIGTERM)
        for pid in running:
            if not _wait_gone(pid, None, 20):
                os.killpg(pid, signal.SIGKILL)
                _wait_gone(pid, None, 10)
        stopped += len(running)
    return stopped


def status(base: Path) -> list[dict[str, Any]]:
    """Each node's URL, head and checkpoint, as its API reports them (or why it cannot)."""
    _, record = LocalCluster.load(base)
    out = []
    for entry in record["nodes"]:
        url = f"http://127.0.0.1:{entry['port']}"
        row: dict[str, Any] = {"name": entry["name"], "org": entry["org"], "url": url}
        try:
            with httpx.Client(base_url=url, timeout=3) as http:
                head = http.get("/v1/head").json()
                row["height"] = head["header"]["height"]
                row["head"] = head["hash"]
                row["log_size"] = head["header"]["log_size"]
                row["checkpoint"] = http.get("/v1/checkpoint").text
                row["cluster"] = http.get("/v1/cluster").json()
            row["up"] = True
        except (httpx.HTTPError, ValueError, KeyError):
            row["up"] = False
        out.append(row)
    return out
