"""The NATS server version gate and the generated server configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from careledger.cluster.natsd import NatsServerSpec, config_text, parse_version, require_version
from careledger.errors import CareLedgerError


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("nats-server: v2.15.1", (2, 15, 1)),
        ("<nats server v2.10.7>", (2, 10, 7)),
        ("nats-server: v2.9.10", (2, 9, 10)),
        ("2.10", (2, 10, 0)),
    ],
)
def test_versions_parse(text: str, version: tuple[int, int, int]) -> None:
    assert parse_version(text) == version


def test_servers_older_than_2_10_are_refused() -> None:
    require_version("nats-server: v2.10.0")
    with pytest.raises(CareLedgerError) as old:
        require_version("nats-server: v2.9.10")  # Debian bookworm's
    assert old.value.code == "NATS_TOO_OLD" and "sync_interval" in old.value.message
    with pytest.raises(CareLedgerError):
        parse_version("no version here")


def test_every_server_fsyncs_every_write() -> None:
    spec = NatsServerSpec("n1", 4222, 6222, 8222, Path("/tmp/js"))
    text = config_text(spec, [spec, NatsServerSpec("n2", 4223, 6223, 8223, Path("/tmp/js2"))])
    assert "sync_interval: always" in text
    assert "nats-route://127.0.0.1:6223" in text and "name: careledger" in text
