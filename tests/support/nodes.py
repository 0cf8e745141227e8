"""Real node directories and real `careledger serve` processes on loopback, bounded in time."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

CLI = [sys.executable, "-m", "careledger.cli"]

_DEMOS: dict[tuple[tuple[str, Any], ...], Path] = {}


def demo_node(data: Path, **options: Any) -> None:
    """A demo node directory at ``data``, as ``init_demo(data, **options)`` writes one.

    Built once per test process and options, then copied: the demo's records take seconds to
    make, and some fifty modules each want a fresh node. The copies share the demo's keys and
    chain id, which no test tells apart (each node is served alone); a test that needs a chain
    of its own (another genesis, other keys) calls ``init_demo`` itself.
    """
    key = tuple(sorted(options.items()))
    template = _DEMOS.get(key)
    if template is None:
        from careledger.nodedir import init_demo

        root = Path(tempfile.mkdtemp(prefix="careledger-demo-"))
        atexit.register(shutil.rmtree, root, True)
        template = root / "node"
        init_demo(template, **options).store.close()
        _DEMOS[key] = template
    shutil.copytree(template, data, dirs_exist_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(
    *args: str, check: bool = False, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"careledger {' '.join(args)} failed: {result.stdout}\n{result.stderr}"
        )
    return result


class Server:
    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *CLI,
                    "serve",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not come up in {timeout}s:\n{self.log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def serving(data_dir: Path) -> Iterator[Server]:
    server = Server(data_dir, free_port(), data_dir.parent / f"{data_dir.name}-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def demo_records(data: Path, **options: Any) -> Iterator[Any]:
    """A demo node at ``data`` (``demo_node(data, **options)``), started in this process, and
    its records service (``HealthRecords.for_node``); both closed after."""
    from careledger.config import Settings
    from careledger.health.service import HealthRecords
    from careledger.node import Node

    demo_node(data, **options)
    node = Node(Settings.load(data))
    node.start()
    try:
        records = HealthRecords.for_node(node)
        try:
            yield records
        finally:
            records.close()
    finally:
        node.stop()


def login(server: Server, key_file: Path) -> httpx.Client:
    """An HTTP client for ``server`` with a bearer token of the key file's member."""
    from careledger.keyfile import read_key_file
    from careledger.sdk import Client

    keypair = read_key_file(key_file)[1]
    with Client(server.url, keypair=keypair) as c:
        token = c.login()
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=30
    )


def wait_for(check: Any, what: str, timeout: float = 20.0, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
