"""Every CLI command, given bad input, says `error CODE: detail` and exits non-zero: never a
Python traceback (issue 18). The commands are found by walking the CLI itself, so a new command
is covered the day it is added."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from careledger.cli import app
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration
CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port here


def leaves(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    if hasattr(command, "commands"):
        return [
            leaf for name, sub in command.commands.items() for leaf in leaves(sub, [*path, name])
        ]
    return [(path, command)]


COMMANDS = leaves(typer.main.get_command(app), [])


def bad_argv(path: list[str], command: Any, tmp: Path) -> list[str]:
    missing = tmp / "missing" / "input"
    a_file = tmp / "a-file"
    a_file.write_text("not what is expected\n")
    argv = list(path)
    for param in command.params:
        kind = type(param).__name__
        if kind.endswith("Argument"):
            # a directory or file argument that is not there (or, for commands that create
            # one, a file where a directory must be)
            creates = path in (["init"], ["cluster", "up"])
            argv.append(str(a_file if creates else missing))
            if getattr(param, "nargs", 1) == -1:
                continue
        elif kind.endswith("Option") and param.required:
            argv += [param.opts[0], str(missing)]
        elif kind.endswith("Option") and param.opts[0] == "--url":
            argv += ["--url", CLOSED]
        elif kind.endswith("Option") and param.opts[0] == "--key":
            argv += ["--key", str(missing)]
    return argv


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_bad_input_gets_a_code_never_a_traceback(path: list[str], tmp_path: Path) -> None:
    command = {tuple(p): c for p, c in COMMANDS}[tuple(path)]
    argv = bad_argv(path, command, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "careledger.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said[-1500:]
    assert done.returncode != 0, (argv, said[-500:])
    assert "error " in said or "Usage:" in said, said[-500:]


def test_there_are_commands_to_check() -> None:
    assert len(COMMANDS) >= 20


def test_a_typo_is_caught_before_it_becomes_a_permanent_refusal(tmp_path: Path) -> None:
    from careledger.keyfile import read_key_file
    from careledger.ledger.execute import NONCE_NAMESPACE
    from careledger.sdk import Client, RemoteError
    from tests.support.nodes import run_cli, serving

    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    key = str(data / "keys" / "st-mary-admin.key")
    typo = '{"id": "Lee RN", "name": "Lee", "roles": ["nurse"], "public_key": "x"}'
    admin = read_key_file(Path(key))[1]

    def last_nonce(client: Client) -> object:
        try:
            return client.get_json(f"/v1/state/{NONCE_NAMESPACE}/{admin.public_b64}")["value"]
        except RemoteError:
            return None  # never signed anything

    with serving(data) as server, Client(server.url, keypair=admin) as client:
        client.login()
        before = last_nonce(client)
        refused = run_cli(
            "submit", "--key", key, "identity", "add_member", typo, "--url", server.url
        )
        assert refused.returncode == 2
        said = refused.stderr + refused.stdout
        assert "BAD_ARGS" in said and "'id'" in said and "nothing was submitted" in said
        assert before is not None  # the demo's admin has signed before
        assert last_nonce(client) == before  # nothing of the admin's reached the ledger
        forced = run_cli(
            "submit", "--key", key, "identity", "add_member", typo, "--url", server.url, "--force"
        )
        assert forced.returncode == 2 and "committed as rejected" in forced.stderr + forced.stdout
        assert last_nonce(client) != before  # --force: the refusal is on the ledger for good
