"""A patient shares their record from the portal, in Chromium (issue 19): a SMART Health Link
made on the page, its QR code scanned by a third-party reader and opened by the receiver written
from the spec; the opening in "who saw my data" with the name the recipient gave; revoked with
one button; a SMART Health Card whose QR a spec verifier accepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.test_portal import axe_problems, shot, sign_in
from tests.support import shc_verifier as shc
from tests.support import shl_receiver as shl
from tests.support.nodes import Server, demo_node, serving
from tests.support.qr_scan import scan

pytestmark = pytest.mark.integration
PASSCODE = "lantern-river-42"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("share") / "node"
    demo_node(data, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    opened.on("dialog", lambda dialog: dialog.accept())
    yield opened
    context.close()


def patient_key(server: Server) -> Path:
    return sorted((server.data_dir / "keys" / "patients").glob("*.key"))[0]


def test_a_patient_makes_a_link_a_stranger_opens_it_and_the_patient_sees_who(
    page: Page, server: Server
) -> None:
    sign_in(page, server, patient_key(server))
    page.goto(f"{server.url}/me/share")
    page.get_by_label("A summary of my health").check()
    page.get_by_label("One week").check()
    page.get_by_label("Passcode").fill(PASSCODE)
    page.get_by_label("Label").fill("For Dr Jones")
    page.get_by_test_id("make-link").click()
    expect(page.get_by_test_id("new-link")).to_be_visible()
    link = page.get_by_test_id("shlink").input_value()
    assert link.startswith("shlink:/")
    # the QR on the page scans (zxing-cpp) to exactly the link
    svg = page.get_by_test_id("link-qr").inner_html()
    assert scan(svg).text == link
    shot(page, "patient-share-link")
    assert axe_problems(page) == []
    with httpx.Client(timeout=30) as client:
        (received,) = shl.open_link(link, recipient="Dr Jones, Urgent Care", passcode=PASSCODE,
                                    client=client)  # fmt: skip
    assert received.content["type"] == "document"
    page.goto(f"{server.url}/me/share")
    row = page.get_by_test_id("link-row").filter(has_text="For Dr Jones")
    expect(row).to_contain_text("1 time")
    expect(row).to_contain_text("a summary of your health")
    page.goto(f"{server.url}/me/access")
    opened = page.get_by_test_id("access-row").filter(has_text="Dr Jones, Urgent Care")
    expect(opened.first).to_contain_text("a SMART Health Link you made")
    shot(page, "patient-access-link-opened")
    page.goto(f"{server.url}/me/share")
    row = page.get_by_test_id("link-row").filter(has_text="For Dr Jones")
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_test_id("link-row").filter(has_text="For Dr Jones")).to_contain_text(
        "revoked"
    )
    with httpx.Client(timeout=30) as client, pytest.raises(shl.ShlError) as gone:
        shl.open_link(link, recipient="Dr Jones", passcode=PASSCODE, client=client)
    assert gone.value.status == 404


def test_a_patient_makes_a_health_card_a_verifier_accepts(page: Page, server: Server) -> None:
    sign_in(page, server, patient_key(server))
    page.goto(f"{server.url}/me/share")
    page.get_by_label("My vaccinations").check()
    page.get_by_test_id("make-card").click()
    expect(page.get_by_test_id("new-card")).to_be_visible()
    numeric = scan(page.get_by_test_id("card-qr").inner_html()).text
    assert numeric.startswith("shc:/")
    with httpx.Client(timeout=30) as client:
        claims = shc.verify_card(shc.decode_numeric(numeric), client=client)
    assert claims
    href = page.get_by_test_id("card-file").get_attribute("href") or ""
    assert href.startswith("data:application/smart-health-card")
    shot(page, "patient-health-card")
