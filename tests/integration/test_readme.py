"""The README's "Try it" works as written, top to bottom, on another port (issue 18): each line
is run by bash in a fresh directory holding a demo node, with only what a reader would fill in
by hand filled in (the key keygen printed, the transaction id submit printed) and the port."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodes import Server, demo_node, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def try_it() -> list[str]:
    """The commands of the README's Try it block (continuations joined, comments dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split("## Try it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines, pending = [], ""
    for raw in body.splitlines():
        line = raw.split("  #", 1)[0].rstrip()
        if not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("readme")
    for name in (".venv", "src", "examples"):
        (work / name).symlink_to(REPO / name)
    demo_node(work / ".careledger")
    with serving(work / ".careledger") as running:
        yield running


def test_try_it_works_as_written(server: Server) -> None:
    work = server.data_dir.parent
    port = server.url.rsplit(":", 1)[1]
    env = {**os.environ, "CARELEDGER_URL": server.url, "COLUMNS": "250"}
    filled: dict[str, str] = {}
    said: dict[str, str] = {}
    commands = try_it()
    assert len(commands) >= 20
    for line in commands:
        command = line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        command = command.replace("/tmp/", f"{work}/")
        for placeholder, value in filled.items():
            command = command.replace(placeholder, value)
        assert "<" not in command.replace("<<", ""), f"unfilled placeholder: {command}"
        assign = re.match(r"^([A-Z_]+)=(.*)$", command)
        script = f'{assign[1]}={assign[2]}; printf %s "${assign[1]}"' if assign else command
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{line}\n{output[-1500:]}"
        assert "Traceback" not in output, line
        if assign:
            env[assign[1]] = done.stdout
        if " keygen " in command:
            filled["<that key>"] = done.stdout.strip().splitlines()[-1]
        if (tx := re.search(r"\(tx ([0-9a-f]{64})\)", output)) is not None:
            filled["<tx id>"] = tx[1]
        said[line] = output
    everything = next(out for cmd, out in said.items() if "$everything" in cmd)
    assert '"resourceType":"Bundle"' in everything.replace(" ", "")
    verified = next(out for cmd, out in said.items() if "product verify" in cmd)
    assert "OK TO DISPENSE" in verified
