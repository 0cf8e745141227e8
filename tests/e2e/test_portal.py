"""The portal in a real browser: Debian's Chromium driven by Playwright against a real node.

Each test is a user's journey; screenshots of each page go to tests/e2e/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, Page, expect

from careledger.demo import DEMO_PRODUCTS
from careledger.keyfile import read_key_file, write_key_file
from careledger.storage.sqlite import SQLiteStore
from tests.support.nodes import Server, demo_node, login, serving

pytestmark = pytest.mark.integration
SHOTS = Path(__file__).parent / "screenshots"
AMOX, AMOX_LOT, *_ = DEMO_PRODUCTS[0]
EXPIRY = "271130"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("portal") / "node"
    demo_node(data)
    with serving(data) as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def link(serial: str) -> str:
    return f"https://id.gs1.org/01/{AMOX}/21/{serial}?10={AMOX_LOT}&17={EXPIRY}"


def confirmations(page: Page) -> list[str]:
    """Accept every confirmation the page asks for, and keep what each said."""
    said: list[str] = []

    def accept(dialog: Any) -> None:
        said.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    return said


def verify(page: Page, code: str) -> None:
    page.get_by_label("GS1 Digital Link or scanned code").fill(code)
    page.get_by_role("button", name="Verify").click()


def test_a_pharmacist_checks_packs_genuine_and_counterfeit(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/verify")
    expect(page.get_by_role("heading", name="Verify a pack")).to_be_visible()
    verify(page, link(f"{AMOX_LOT}0010"))
    expect(page.get_by_test_id("verdict")).to_have_text("OK to dispense")
    shot(page, "verify-genuine")
    verify(page, link("FAKE0001"))  # a serial Acme never commissioned
    expect(page.get_by_test_id("verdict")).to_have_text("Do not dispense")
    expect(page.get_by_test_id("verdict-reason")).to_contain_text("may be counterfeit")
    expect(page.get_by_test_id("lms")).to_contain_text("No_match_GTIN_Serial")
    shot(page, "verify-counterfeit")
    verify(page, link(f"{AMOX_LOT}0001"))  # dispensed to a patient already
    expect(page.get_by_test_id("verdict")).to_have_text("Do not dispense")
    expect(page.get_by_test_id("verdict-reason")).to_contain_text("already dispensed on")
    verify(page, "https://id.gs1.org/01/00312345100019/21/X")  # bad check digit
    expect(page.get_by_test_id("verify-error")).to_contain_text("BAD_CHECK_DIGIT")
    verify(page, f"https://id.gs1.org/01/{AMOX}/21/{AMOX_LOT}0010")  # no lot, no expiry
    expect(page.get_by_test_id("verify-error")).to_contain_text("INCOMPLETE_IDENTIFIER")


def test_signing_in_with_a_key_file_shows_the_packs_journey(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/signin")
    key = server.data_dir / "keys" / "ph-chen-li.key"
    page.get_by_label("Key file").set_input_files(str(key))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in")).to_have_text("ph-chen-li · city-pharmacy")
    shot(page, "home-signed-in")
    page.goto(f"{server.url}/verify")
    verify(page, link(f"{AMOX_LOT}0002"))
    journey = page.get_by_test_id("journey")
    expect(journey).to_contain_text("commissioning")
    expect(journey).to_contain_text("shipping")  # the case it travelled in
    expect(journey).to_contain_text("receiving")
    expect(journey).to_contain_text("dispensing")
    route = page.get_by_test_id("route")
    expect(route).to_have_attribute(
        "aria-label",
        "Acme plant, Springfield then Medline distribution centre then City Pharmacy, High Street",
    )
    shot(page, "verify-journey")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("banner").get_by_role("link", name="Sign in")).to_be_visible()


def test_a_wrong_key_file_is_refused_with_a_reason(
    page: Page, server: Server, tmp_path: Path
) -> None:
    bogus = tmp_path / "not-a-key.key"
    bogus.write_text('{"type": "something-else"}')
    page.goto(f"{server.url}/signin")
    page.get_by_label("Key file").set_input_files(str(bogus))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("status")).to_contain_text("not a CareLedger key file")
    shot(page, "signin")


def test_the_explorer_checks_an_inclusion_proof_in_the_browser(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/explorer")
    expect(page.get_by_test_id("head")).to_contain_text("Checkpoint signed by")
    expect(page.get_by_test_id("chart").locator("canvas")).to_have_count(1)  # per day
    shot(page, "explorer")
    page.locator("tbody tr a").last.click()
    expect(page.get_by_role("heading", name="Block")).to_be_visible()
    page.locator("table a").first.click()
    expect(page.get_by_test_id("proof-verdict")).to_have_text("Verified in your browser")
    expect(page.locator("#proof-steps li.bad")).to_have_count(0)
    shot(page, "explorer-proof")


def test_a_rejected_transaction_never_wears_a_green_badge(page: Page, server: Server) -> None:
    from careledger.sdk import Client, RemoteError

    keys = server.data_dir / "keys"
    with (
        Client(server.url, keypair=read_key_file(keys / "dr-ana-silva.key")[1]) as c,
        pytest.raises(RemoteError) as refused,
    ):
        c.call("consent", "revoke", {"consent": "0" * 64})
    receipt = refused.value.body["receipt"]  # committed, and rejected
    assert receipt["result"] == "rejected"
    page.goto(f"{server.url}/explorer/tx/{receipt['tx_id']}")
    verdict = page.get_by_test_id("proof-verdict")
    expect(verdict).to_have_text(f"Included in the ledger: rejected ({receipt['code']})")
    expect(verdict).to_have_class(re.compile(r"\bbad\b"))
    expect(page.get_by_test_id("tx-result")).to_contain_text("changed nothing")


def test_pages_work_on_a_phone(browser: Browser, server: Server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    try:
        phone.goto(f"{server.url}/verify")
        verify(phone, link(f"{AMOX_LOT}0010"))
        expect(phone.get_by_test_id("verdict")).to_have_text("OK to dispense")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
        shot(phone, "verify-phone")
    finally:
        context.close()


def sign_in(page: Page, server: Server, key: Path) -> None:
    page.goto(f"{server.url}/signin")
    page.get_by_label("Key file").set_input_files(str(key))
    page.get_by_role("button", name="Sign in").click()
    # The sign-in page itself shows whoever was signed in before: wait for the page's own
    # navigation away from it, or a later goto races it (net::ERR_ABORTED)
    page.wait_for_url(lambda url: "/signin" not in url)
    expect(page.get_by_test_id("signed-in")).to_be_visible()


def northside_may_read(server: Server, patient: str) -> bool:
    store = SQLiteStore(server.data_dir / "ledger.sqlite", readonly=True)
    try:
        for key in store.state_keys("consent", f"by-patient/{patient}/", 1000):
            raw = store.get_state("consent", f"consent/{key.rsplit('/', 1)[1]}")
            entry = orjson.loads(raw or b"{}")
            if (
                entry.get("grantee", {}).get("org") == "northside-clinic"
                and entry.get("status") == "active"
            ):
                return True
        return False
    finally:
        store.close()


def patient_key(server: Server) -> Path:
    return sorted((server.data_dir / "keys" / "patients").glob("*.key"))[0]


def test_a_patient_sees_verified_records_and_exports_them(page: Page, server: Server) -> None:
    key = patient_key(server)
    sign_in(page, server, key)
    page.get_by_role("link", name="My records").click()
    records = page.get_by_test_id("records").locator("li")
    expect(records.first).to_be_visible()
    count = records.count()
    assert count > 10
    expect(page.get_by_text("Verified on the ledger").first).to_be_visible()
    expect(page.get_by_test_id("chart").locator("canvas")).to_have_count(1)
    shot(page, "patient-records")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export everything (FHIR)").click()
    bundle = orjson.loads(Path(download.value.path()).read_bytes())
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == count
    page.get_by_text("Verified on the ledger").first.click()
    expect(page.get_by_test_id("proof-verdict")).to_have_text("Verified in your browser")
    page.goto(f"{server.url}/me/access")
    log = page.get_by_test_id("access-log")
    expect(log).to_contain_text("You")  # the patient's own reads are on the record too
    shot(page, "patient-access-log")


def test_a_revoked_consent_stops_the_clinician_at_once(
    page: Page, server: Server, browser: Browser
) -> None:
    key = patient_key(server)
    patient = key.stem
    sign_in(page, server, key)
    page.goto(f"{server.url}/me/consents")
    # nothing is chosen for the patient: who, which records, what for and how long
    expect(page.get_by_label("Organisation")).to_have_value("")
    assert not page.locator("input[name=types]:checked").count()
    expect(page.get_by_label("Organisation")).to_contain_text("(your hospital)")

    def grant_northside() -> None:
        page.get_by_label("Organisation").select_option("northside-clinic")
        page.get_by_label("Everything").check()
        page.get_by_label("Treatment").check()
        page.get_by_label("30 days").check()
        page.get_by_role("button", name="Grant").click()

    grant_northside()
    table = page.get_by_test_id("consents")
    expect(table).to_contain_text("Northside Clinic")
    expect(table).to_contain_text("everything")
    shot(page, "patient-consents")
    grant_northside()  # the very same again: refused, said plainly
    expect(page.get_by_test_id("consent-problem")).to_contain_text("already gave this consent")
    clinician = browser.new_context().new_page()
    try:
        sign_in(clinician, server, server.data_dir / "keys" / "dr-ben-okafor.key")
        clinician.goto(f"{server.url}/clinician")
        clinician.get_by_test_id("consented").get_by_role("link", name=patient).click()
        expect(clinician.get_by_test_id("history")).to_contain_text("st-mary")
        asked = confirmations(page)
        active = page.get_by_test_id("consents").locator("tr", has_text="northside-clinic")
        active = active.filter(has_text="active")
        for _ in range(5):  # the demo may hold an older Northside consent too: revoke them all
            if active.count() == 0:
                break
            active.first.get_by_role("button", name="Revoke").click()
            page.wait_for_load_state()
        expect(active).to_have_count(0)
        assert asked and "Revoke this consent?" in asked[0]
        clinician.reload()  # the very next view is refused
        expect(clinician.get_by_test_id("refused")).to_be_visible()
        expect(clinician.get_by_test_id("history")).to_have_count(0)
    finally:
        clinician.context.close()


def test_a_manufacturer_recalls_a_lot_and_sees_its_holders(page: Page, server: Server) -> None:
    metformin, met_lot, *_ = DEMO_PRODUCTS[1]
    sign_in(page, server, server.data_dir / "keys" / "acme-admin.key")
    page.get_by_role("link", name="Recalls").click()
    page.get_by_label("GTIN").fill(metformin)
    page.get_by_label("Lots (comma-separated)").fill(met_lot)
    page.get_by_label("Reason").fill("dissolution failure")
    asked = confirmations(page)
    page.get_by_role("button", name="Recall").click()
    recall = page.get_by_test_id("recall").first
    expect(recall).to_contain_text("dissolution failure")
    expect(recall).to_contain_text("medline-dist")  # 12 at the distributor
    expect(recall).to_contain_text("city-pharmacy")  # 12 at the pharmacy, one under investigation
    assert "Every holder is told at once" in asked[0]
    shot(page, "manufacturer-recall")
    page.get_by_label("GTIN").fill(metformin)
    page.get_by_label("Lots (comma-separated)").fill("NO-SUCH-LOT")
    page.get_by_label("Reason").fill("x")
    page.get_by_role("button", name="Recall").click()
    expect(page.get_by_test_id("recall-error")).to_contain_text("UNKNOWN_LOT")


def test_a_clinician_without_consent_breaks_the_glass_and_the_patient_sees_it(
    page: Page, server: Server, browser: Browser
) -> None:
    patients = [
        p
        for p in sorted((server.data_dir / "keys" / "patients").glob("*.key"))
        if not northside_may_read(server, p.stem)
    ]
    patient = patients[-1].stem
    sign_in(page, server, server.data_dir / "keys" / "dr-ben-okafor.key")
    page.get_by_role("link", name="Patients").click()
    page.get_by_label("Patient id").fill(patient)
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_test_id("refused")).to_contain_text("NO_CONSENT")
    page.get_by_label("Reason").select_option("unconscious")
    page.get_by_label("Your key file").set_input_files(
        str(server.data_dir / "keys" / "dr-ben-okafor.key")
    )
    asked = confirmations(page)
    page.get_by_role("button", name="Break the glass").click()
    assert "told at once" in asked[0]
    # Northside has no care relationship with St Mary's patient: a colleague must co-sign.
    expect(page.get_by_test_id("glass-pending")).to_be_visible()
    colleague = browser.new_context()
    nurse = colleague.new_page()
    try:
        sign_in(nurse, server, server.data_dir / "keys" / "rn-sam-osei.key")
        nurse.goto(f"{server.url}/clinician")
        waiting = nurse.get_by_test_id("to-confirm")
        expect(waiting).to_contain_text("dr-ben-okafor")
        expect(waiting).to_contain_text(patient)
        waiting.get_by_label("Your key file").set_input_files(
            str(server.data_dir / "keys" / "rn-sam-osei.key")
        )
        cosign = confirmations(nurse)
        waiting.get_by_role("button", name="Co-sign emergency access").click()
        expect(waiting.get_by_role("status")).to_contain_text("Co-signed", timeout=20_000)
        assert "Your name is recorded with it" in cosign[0]
        shot(nurse, "clinician-cosigns-break-glass")
    finally:
        colleague.close()
    page.get_by_role("link", name="Open the record again").click()
    expect(page.get_by_test_id("emergency")).to_be_visible()
    custodian = browser.new_context()  # the patient's own hospital is told at once
    try:
        staff = custodian.new_page()
        sign_in(staff, server, server.data_dir / "keys" / "dr-ana-silva.key")
        staff.goto(f"{server.url}/clinician")
        told = staff.get_by_test_id("glass-on-ours")
        expect(told).to_contain_text("dr-ben-okafor")
        expect(told).to_contain_text(patient)
        expect(told).to_contain_text("rn-sam-osei")
    finally:
        custodian.close()
    history = page.get_by_test_id("history")
    expect(history).to_contain_text("st-mary")  # the source organisation of each record
    shot(page, "clinician-break-glass")
    context = browser.new_context()
    patient_page = context.new_page()
    try:
        sign_in(patient_page, server, patients[-1])
        patient_page.goto(f"{server.url}/me/access")
        flagged = patient_page.locator("tr.glass")
        expect(flagged.first).to_contain_text("Dr Ben Okafor")
        expect(flagged.first).to_contain_text("Emergency access")
        shot(patient_page, "patient-sees-break-glass")
    finally:
        context.close()


def test_a_passphrase_protected_key_file_opens_in_the_browser(
    page: Page, server: Server, tmp_path: Path
) -> None:
    _, keypair = read_key_file(server.data_dir / "keys" / "dr-ana-silva.key")
    protected = tmp_path / "dr-ana-silva.key"
    write_key_file(protected, keypair, name="dr-ana-silva", passphrase="correct horse")
    page.goto(f"{server.url}/signin")
    page.get_by_label("Key file").set_input_files(str(protected))
    page.get_by_label("Passphrase, if the file has one").fill("wrong horse")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("status")).to_contain_text("wrong passphrase", timeout=20_000)
    page.get_by_label("Passphrase, if the file has one").fill("correct horse")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in")).to_have_text("dr-ana-silva · st-mary", timeout=20_000)


AXE = Path(__file__).parents[2] / "build" / "npm" / "node_modules" / "axe-core" / "axe.min.js"


def axe_problems(page: Page) -> list[str]:
    """Serious and critical WCAG 2.1 A/AA findings of axe-core on the page as it is."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21aa']}))"
        ".violations.filter(v => ['serious', 'critical'].includes(v.impact))"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', '))"
    )
    return list(result)


def test_pages_pass_an_accessibility_check(page: Page, server: Server) -> None:
    assert AXE.exists(), "scripts/vendor-assets.sh installs axe-core for this test"
    problems: dict[str, list[str]] = {}
    for path in ("/", "/signin", "/verify", "/explorer", "/explorer/blocks/1", "/keys/new"):
        page.goto(f"{server.url}{path}")
        problems[path] = axe_problems(page)
    page.goto(f"{server.url}/verify")
    verify(page, link(f"{AMOX_LOT}0010"))
    expect(page.get_by_test_id("verdict")).to_be_visible()
    problems["/verify (result)"] = axe_problems(page)
    sign_in(page, server, patient_key(server))
    for path in ("/me", "/me/access", "/me/consents", "/me/research", "/me/vitals", "/visits",
                 "/me/apps", "/me/share"):  # fmt: skip
        page.goto(f"{server.url}{path}")
        problems[path] = axe_problems(page)
    sign_in(page, server, server.data_dir / "keys" / "dr-ana-silva.key")  # a clinician's too
    for path in ("/clinician", "/clinician?find=an", "/clinician?patient=nobody-here"):
        page.goto(f"{server.url}{path}")
        problems[path] = axe_problems(page)
    assert {p: v for p, v in problems.items() if v} == {}


def test_a_pharmacist_records_a_dispense(page: Page, server: Server) -> None:
    sign_in(page, server, server.data_dir / "keys" / "ph-chen-li.key")
    page.goto(f"{server.url}/verify")
    verify(page, link(f"{AMOX_LOT}0011"))
    expect(page.get_by_test_id("verdict")).to_have_text("OK to dispense")
    asked = confirmations(page)
    page.get_by_role("button", name="Record dispense").click()
    expect(page.get_by_test_id("dispense-result")).to_have_text(
        "Dispensed · recorded on the ledger"
    )
    assert "leaves circulation for good" in asked[0]
    verify(page, link(f"{AMOX_LOT}0011"))  # the same pack again: no longer in circulation
    expect(page.get_by_test_id("verdict")).to_have_text("Do not dispense")
    expect(page.get_by_test_id("verdict-reason")).to_contain_text("already dispensed on")
    expect(page.get_by_role("button", name="Record dispense")).to_have_count(0)


def test_a_patient_makes_a_key_in_the_browser_and_is_registered(
    page: Page, server: Server, browser: Browser, tmp_path: Path
) -> None:
    page.goto(f"{server.url}/keys/new")
    page.get_by_label("Your name for the file").fill("new-patient")
    page.get_by_role("button", name="Make my key").click()
    public_key = page.get_by_test_id("public-key").inner_text()
    with page.expect_download() as download:
        page.get_by_role("link", name="Save the key file").click()
    key_file = tmp_path / "new-patient.key"
    key_file.write_bytes(Path(download.value.path()).read_bytes())
    assert read_key_file(key_file)[1].public_b64 == public_key  # the CLI reads it too
    admin = browser.new_context().new_page()
    try:
        sign_in(admin, server, server.data_dir / "keys" / "st-mary-admin.key")
        admin.goto(f"{server.url}/admin/patients")
        admin.get_by_label("The patient's public key").fill(public_key)
        admin.get_by_role("button", name="Register").click()
        expect(admin.get_by_test_id("registered")).to_contain_text("Registered as pt-")
    finally:
        admin.context.close()
    sign_in(page, server, key_file)
    expect(page.get_by_test_id("signed-in")).to_contain_text("st-mary")
    page.get_by_role("link", name="My records").click()
    expect(page.get_by_test_id("records")).to_contain_text("No records yet")


def test_a_scanned_element_string_is_verified(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/verify")
    scanned = f"(01){AMOX}(21){AMOX_LOT}0010(10){AMOX_LOT}(17){EXPIRY}"
    verify(page, scanned)
    expect(page.get_by_test_id("verdict")).to_have_text("OK to dispense")
    camera = page.evaluate("'BarcodeDetector' in window")
    expect(page.get_by_role("button", name="Scan the pack's code with the camera")).to_have_count(
        1 if camera else 0
    )


def test_a_pack_checked_by_typed_numbers(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/verify")
    page.get_by_text("Or type the numbers").click()
    page.get_by_label("GTIN").fill(AMOX)
    page.get_by_label("Serial").fill(f"{AMOX_LOT}0010")
    page.get_by_label("Lot").fill("WRONG")
    page.get_by_label("Expiry (YYMMDD)").fill(EXPIRY)
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_test_id("verdict")).to_have_text("Do not dispense")
    expect(page.get_by_test_id("verdict-reason")).to_contain_text("does not match")
    expect(page.get_by_test_id("lms")).to_contain_text("No_match_GTIN_Serial_Lot")


def test_a_patient_erases_a_record(page: Page, server: Server) -> None:
    key = sorted((server.data_dir / "keys" / "patients").glob("*.key"))[1]
    sign_in(page, server, key)
    page.goto(f"{server.url}/me")
    records = page.get_by_test_id("records").locator("li")
    expect(records.first).to_be_visible()
    before = records.count()
    page.once("dialog", lambda dialog: dialog.dismiss())  # "no": nothing happens
    records.last.get_by_role("button").click()
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("records").locator("li")).to_have_count(before)
    asked = confirmations(page)
    records.last.get_by_role("button").click()
    expect(page.get_by_test_id("records").locator("li")).to_have_count(before - 1)
    assert "Erase this record for good?" in asked[0]


def test_a_patient_answers_an_invitation_and_consents_to_a_trial(
    page: Page, server: Server, browser: Browser
) -> None:
    from careledger.sdk import Client

    keys = server.data_dir / "keys"

    def call(key_file: Path, contract: str, method: str, args: dict) -> dict:
        with Client(server.url, keypair=read_key_file(key_file)[1]) as c:
            receipt = c.call(contract, method, args)
        assert receipt["result"] == "accepted", (method, receipt)
        return dict(receipt)

    registration = {
        "study": "HEART-1",
        "registry_id": "NCT77777777",
        "title": "Heart failure outcomes",
        "protocol_hash": "3" * 64,
        "sap_hash": "4" * 64,
        "primary": ["Hospitalisation at 1 year"],
        "secondary": [],
        "eligibility": {"age": [0, 150]},
        "visits": [{"id": "baseline", "day": 0, "window": 5}],
        "sites": ["st-mary"],
    }
    call(keys / "trialco-admin.key", "trials", "register", registration)
    patient = patient_key(server)
    research_contact = {
        "grantee": {"org": "st-mary"},
        "actions": ["read"],
        "resource_types": ["*"],
        "purposes": ["HRESCH"],
    }
    call(patient, "consent", "grant", research_contact)
    # the site invites its opted-in patients itself (from r5 a sponsor's query never does)
    with Client(server.url, keypair=read_key_file(keys / "dr-ana-silva.key")[1]) as c:
        c.login()
        assert c.post_json("/v1/trials/HEART-1/invitations", {})["invited"] >= 1

    sign_in(page, server, patient)
    page.get_by_role("link", name="My records").click()
    page.get_by_role("link", name="Research").click()
    invitations = page.get_by_test_id("invitations")
    for _ in range(50):  # the site's node answers and invites in the background
        if "HEART-1" in invitations.inner_text():
            break
        page.wait_for_timeout(200)
        page.reload()
    expect(invitations).to_contain_text("HEART-1")
    shot(page, "patient-invitation")
    page.get_by_role("button", name="I'm interested").click()
    expect(page.get_by_test_id("invitations")).to_contain_text("interested")

    call(
        keys / "dr-ana-silva.key",
        "trials",
        "enrol",
        {"study": "HEART-1", "participant": patient.stem},
    )
    page.reload()
    page.get_by_role("button", name="Consent to version 1").click()
    studies = page.get_by_test_id("studies")
    expect(studies).to_contain_text("consented to version 1")
    shot(page, "patient-trial-consent")
    page.get_by_role("button", name="Withdraw").click()
    expect(page.get_by_test_id("studies")).to_contain_text("withdrawn")

    # a patient with their own key signs the consent in the browser
    call(
        keys / "dr-ana-silva.key",
        "trials",
        "enrol",
        {"study": "HEART-1", "participant": "patient-0001"},
    )
    context = browser.new_context()
    own = context.new_page()
    try:
        sign_in(own, server, keys / "patient-0001.key")
        own.goto(f"{server.url}/me/research")
        own.get_by_label("Your key file").set_input_files(str(keys / "patient-0001.key"))
        own.get_by_role("button", name="Sign consent to version 1").click()
        expect(own.get_by_test_id("studies")).to_contain_text("consented to version 1")
    finally:
        context.close()


def test_monitoring_alerts_are_acknowledged_and_a_visit_is_joined(
    page: Page, server: Server, browser: Browser
) -> None:
    import time as clock

    import httpx

    from careledger.keyfile import generate_keypair
    from careledger.monitoring import mimic
    from careledger.monitoring.device import sign_batch
    from careledger.sdk import Client
    from tests.support.vectors import vector_path

    keys = server.data_dir / "keys"
    patient_file = patient_key(server)
    patient = patient_file.stem

    def call(key_file: Path, contract: str, method: str, args: dict) -> None:
        with Client(server.url, keypair=read_key_file(key_file)[1]) as c:
            receipt = c.call(contract, method, args)
        assert receipt["result"] == "accepted", (method, receipt)

    device = generate_keypair()
    register = {"id": "oxi-e2e", "model": "PulseOx", "public_key": device.public_b64}
    call(keys / "st-mary-admin.key", "monitoring", "register_device", register)
    call(patient_file, "monitoring", "bind", {"device": "oxi-e2e"})
    rule = {"id": "spo2-low", "kind": "threshold", "code": "59408-5", "op": "<", "value": 90}
    rules = {"patient": patient, "device": "oxi-e2e", "rules": [rule]}
    call(keys / "dr-ana-silva.key", "monitoring", "set_rules", rules)
    with Client(server.url, keypair=read_key_file(keys / "dr-ana-silva.key")[1]) as c:
        token = c.login()
    auth = {"authorization": f"Bearer {token}"}
    before = len(httpx.get(f"{server.url}/v1/monitoring/alerts", headers=auth).json()["items"])
    start = int(clock.time() * 1000) - 4 * 60_000
    csv = vector_path("wfdb-mimic2-numerics", "s25047-2704-05-04-10-44n.csv")
    for seq, batch in enumerate(mimic.batches(csv, start_ms=start), start=1):
        envelope = sign_batch(device, {"device": "oxi-e2e", "seq": seq, "compact": batch})
        sent = httpx.post(f"{server.url}/v1/devices/oxi-e2e/readings", json=envelope)
        assert sent.status_code == 202, sent.text

    sign_in(page, server, keys / "dr-ana-silva.key")
    page.get_by_role("link", name="Alerts").click()
    inbox = page.get_by_test_id("inbox").locator("tbody tr")
    for _ in range(50):  # windows are anchored within a few seconds
        if inbox.count() == before + 5:
            break
        page.wait_for_timeout(200)
        page.reload()
    expect(inbox).to_have_count(before + 5)
    shot(page, "clinician-alert-inbox")
    inbox.first.get_by_role("button", name="Acknowledge").click()
    expect(page.get_by_test_id("inbox").locator("tbody tr")).to_have_count(before + 4)
    page.get_by_test_id("inbox").get_by_role("link", name=patient).first.click()
    expect(page.get_by_test_id("vitals-chart").first.locator("canvas")).to_have_count(1)
    expect(page.get_by_test_id("alerts").locator("tbody tr")).to_have_count(5)

    now = int(clock.time() * 1000)
    visit = {
        "patient": patient,
        "start": now + 5 * 60_000,
        "end": now + 30 * 60_000,
        "link": "https://video.example/room/e2e",
        "recording": True,
        "reason": "oxygen review",
    }
    made = httpx.post(f"{server.url}/v1/visits", json=visit, headers=auth)
    assert made.status_code == 201, made.text

    context = browser.new_context()
    patient_page = context.new_page()
    try:
        sign_in(patient_page, server, patient_file)
        patient_page.goto(f"{server.url}/me/vitals")
        charts = patient_page.get_by_test_id("vitals-chart")
        expect(charts.first.locator("canvas")).to_have_count(1)
        shot(patient_page, "patient-vitals")
        patient_page.goto(f"{server.url}/visits")
        patient_page.get_by_role("button", name="I agree to this visit").click()
        expect(patient_page.get_by_test_id("upcoming")).to_contain_text("no recording")
        patient_page.get_by_role("button", name="Join").click()
        expect(patient_page.get_by_test_id("room")).to_have_attribute(
            "href", "https://video.example/room/e2e"
        )
        shot(patient_page, "patient-visit-room")
    finally:
        context.close()


def test_errors_are_portal_pages_and_sign_in_comes_back(page: Page, server: Server) -> None:
    missing = page.goto(f"{server.url}/no-such-page")
    assert missing is not None and missing.status == 404
    expect(page.get_by_test_id("error-title")).to_have_text("Nothing here")
    assert "application/json" not in (missing.headers.get("content-type") or "")
    page.goto(f"{server.url}/me/consents")  # signed out: sign in, then back here
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fme%2Fconsents$"))
    page.get_by_label("Key file").set_input_files(str(patient_key(server)))
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/me/consents$"))
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, server, server.data_dir / "keys" / "ph-chen-li.key")
    other = page.goto(f"{server.url}/me")  # a patient's page, for a pharmacist
    assert other is not None and other.status == 403
    expect(page.get_by_test_id("error-title")).to_have_text("This page is not for you")
    expect(page.get_by_test_id("error-message")).to_contain_text("patient")
    icon = page.request.get(f"{server.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"
    api = page.request.get(f"{server.url}/v1/no-such-thing")  # machines still get JSON
    assert api.status == 404 and api.json()["code"] == "NOT_FOUND"


def test_the_api_docs_work_offline(page: Page, server: Server) -> None:
    """Every request the /docs page makes stays on this node (no CDN)."""
    elsewhere: list[str] = []

    def only_here(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_here)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .information-container")).to_contain_text("CareLedger")
    spec = page.request.get(f"{server.url}/openapi.json").json()
    groups = {t for path in spec["paths"].values() for op in path.values() for t in op["tags"]}
    expect(page.locator(".opblock-tag")).to_have_count(len(groups))  # every group listed
    page.locator(".opblock-tag", has_text="fhir").first.click()  # and opened on demand
    expect(page.get_by_text("/fhir/metadata").first).to_be_visible()
    assert elsewhere == []


PHONE_PAGES = {
    None: [
        "/",
        "/verify",
        "/explorer",
        "/signin",
        "/keys/new",
        "/explorer/members/dr-ana-silva",
        "/explorer/blocks/1",
    ],
    "patient": [
        "/me",
        "/me/access",
        "/me/consents",
        "/me/vitals",
        "/me/research",
        "/visits",
        "/me/apps",
    ],
    "dr-ana-silva": ["/clinician", "/clinician?find=an", "/alerts", "/visits"],
    "acme-admin": ["/recalls"],
    "st-mary-admin": ["/admin/patients", "/explorer/members/dr-ana-silva", "/explorer/blocks/1"],
}


def test_no_page_is_wider_than_a_phone(browser: Browser, server: Server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    wide: list[tuple[str, int]] = []
    try:
        for who, paths in PHONE_PAGES.items():
            if who is not None:
                key = (
                    patient_key(server)
                    if who == "patient"
                    else server.data_dir / "keys" / f"{who}.key"
                )
                phone.context.clear_cookies()
                sign_in(phone, server, key)
            for path in paths:
                phone.goto(f"{server.url}{path}")
                width = phone.evaluate("document.documentElement.scrollWidth")
                if width > 390:
                    wide.append((path, width))
    finally:
        context.close()
    assert wide == [], f"pages that scroll sideways on a phone: {wide}"


def test_clinicians_find_patients_by_name_and_an_unknown_id_says_so(
    page: Page, server: Server
) -> None:
    key = patient_key(server)
    with login(server, key) as own:
        family = own.get(f"/fhir/Patient/{key.stem}").json()["name"][0]["family"]
    sign_in(page, server, server.data_dir / "keys" / "dr-ana-silva.key")
    page.goto(f"{server.url}/clinician")
    page.get_by_label("Find a patient by name").fill(family[:4])
    page.get_by_role("button", name="Find").click()
    found = page.get_by_test_id("found")
    expect(found).to_contain_text(family)
    found.get_by_role("link").filter(has_text=family).first.click()
    expect(page.get_by_test_id("history")).to_be_visible()
    page.goto(f"{server.url}/clinician?patient=nobody-here")
    expect(page.get_by_test_id("unknown-patient")).to_contain_text("No patient has the id")
    expect(page.locator("#glass")).to_have_count(0)  # no break-glass offered for nobody


def test_an_admin_finds_registration_and_keys_from_home(page: Page, server: Server) -> None:
    sign_in(page, server, server.data_dir / "keys" / "st-mary-admin.key")
    page.goto(f"{server.url}/")
    links = page.get_by_test_id("my-links")
    expect(links.get_by_role("link", name="Register a patient")).to_have_attribute(
        "href", "/admin/patients"
    )
    links.get_by_role("link", name="Make a key for someone").click()
    expect(page.locator("#made")).to_be_hidden()  # the key is shown only once made


def test_the_explorer_finds_and_pages_and_says_who_did_what(page: Page, server: Server) -> None:
    # anyone: blocks and proofs, but not who signed what (that names patients by pseudonym)
    page.goto(f"{server.url}/explorer/blocks/1")
    expect(page.locator("table")).not_to_contain_text("identity")
    page.goto(f"{server.url}/explorer?q=dr-ana-silva")
    expect(page.get_by_test_id("not-found")).to_be_visible()  # no oracle of who is a member
    sign_in(page, server, server.data_dir / "keys" / "st-mary-admin.key")
    page.goto(f"{server.url}/explorer")
    blocks = page.get_by_test_id("blocks")
    expect(blocks.locator("tbody tr")).to_have_count(15)
    newest = int(blocks.locator("tbody tr a").first.inner_text())
    page.get_by_test_id("older").click()
    expect(blocks.locator("tbody tr a").first).to_have_text(str(newest - 15))
    search = page.get_by_label(
        "Find a transaction id, a block height, or (admins and auditors) a member's id"
    )
    search.fill("1")
    page.get_by_role("button", name="Find").click()
    expect(page.get_by_role("heading", name="Block 1")).to_be_visible()
    expect(page.locator("table")).to_contain_text("identity")  # contract, method, signer
    page.locator("table a").first.click()
    expect(page.get_by_test_id("tx-what")).to_contain_text("signed by")
    tx_id = page.url.rsplit("/", 1)[1]
    page.goto(f"{server.url}/explorer?q={tx_id}")
    expect(page).to_have_url(re.compile(f"/explorer/tx/{tx_id}$"))
    page.goto(f"{server.url}/explorer?q=dr-ana-silva")
    expect(page.get_by_test_id("member")).to_contain_text("clinician")
    page.goto(f"{server.url}/explorer?q=nobody-at-all")
    expect(page.get_by_test_id("not-found")).to_contain_text("nobody-at-all")
