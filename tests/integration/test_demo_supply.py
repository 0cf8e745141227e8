"""The demo's supply chain, as `make run` serves it: stock, events, verification, a case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from careledger.demo import DEMO_LOCATIONS, DEMO_PRODUCTS
from tests.integration.test_epcis_api import client_for
from tests.support.nodes import Server, demo_node, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data: Path = tmp_path_factory.mktemp("demo") / "node"
    demo_node(data, with_records=False)
    with serving(data) as running:
        yield running


def test_demo_supply_chain_is_served(server: Server) -> None:
    (amox, amox_lot, amox_expiry, _), (metformin, *_) = DEMO_PRODUCTS
    yymmdd = amox_expiry[2:4] + amox_expiry[5:7] + amox_expiry[8:10]
    plant, dc, pharmacy = (gln for gln, _ in DEMO_LOCATIONS.values())
    with client_for(server, "acme-admin") as acme:
        stock = acme.get("/v1/supply/inventory").json()["locations"]
        found = {(s["gtin"], s["gln"]): s["quantity"] for s in stock}
        assert found == {
            (amox, dc): 12,
            (amox, pharmacy): 9,
            (metformin, dc): 12,
            (metformin, pharmacy): 12,
        }
        assert plant not in {s["gln"] for s in stock}
        dispensed = acme.get("/epcis/events", params={"EQ_bizStep": "dispensing"}).json()
        assert len(dispensed["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 3
        (case,) = acme.get("/v1/supply/suspects").json()["items"]
        assert (case["gtin"], case["stage"]) == (metformin, "investigating")
    link = f"https://id.gs1.org/01/{amox}/21/{amox_lot}0001?10={amox_lot}&17={yymmdd}"
    gone = httpx.get(f"{server.url}/v1/supply/verify", params={"link": link}).json()
    assert gone["data"]["verified"] is False  # dispensed to a patient in the demo
    shelf_link = f"https://id.gs1.org/01/{amox}/21/{amox_lot}0010?10={amox_lot}&17={yymmdd}"
    on_shelf = httpx.get(f"{server.url}/v1/supply/verify", params={"link": shelf_link}).json()
    assert on_shelf["data"] == {"verified": True}
