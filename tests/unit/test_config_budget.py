"""node.json may set the per-member write budget; a malformed one is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.errors import ValidationError
from careledger.write_budget import Budget


def node_dir(tmp_path: Path, **extra: object) -> Path:
    config = {"node_name": "n", "org": "o", "node_key": "keys/n.key", **extra}
    (tmp_path / "node.json").write_text(json.dumps(config))
    return tmp_path


def test_the_write_budget_comes_from_node_json(tmp_path: Path) -> None:
    assert Settings.load(node_dir(tmp_path)).write_budget == Budget()
    custom = node_dir(tmp_path, write_budget={"tx_burst": 10, "bytes_per_second": 100})
    budget = Settings.load(custom).write_budget
    assert (budget.tx_burst, budget.bytes_per_second, budget.tx_per_second) == (10, 100, 200)


@pytest.mark.parametrize("bad", [{"tx_burst": -1}, {"nope": 1}, [1]])
def test_a_bad_write_budget_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValidationError):
        Settings.load(node_dir(tmp_path, write_budget=bad))
