"""SMART authorization codes and EHR launches outlive a restart of the node (issue 17): a code
issued before ``kill -9`` is exchanged after it, exactly once; a code spent before it still
revokes what it gave when replayed after it; a launch made before it still carries its patient.
Over real HTTP, with the user in Chromium, as the SMART tests do."""

from __future__ import annotations

import base64
import hashlib
import http.server
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.nodes import Server, demo_node, free_port, login

pytestmark = pytest.mark.integration
FORM = {"content-type": "application/x-www-form-urlencoded"}
CLIENT = "restart-app"
SCOPE = "launch openid fhirUser patient/*.rs"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "node"
    demo_node(data, with_supply=False)
    running = Server(data, free_port(), tmp_path / "server.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()


class AppSite:
    """The app's own origin: a real HTTP server on loopback that remembers every URL the
    browser was sent to (launch and redirect URIs)."""

    def __init__(self) -> None:
        self.landed: list[str] = []
        site = self

        class Recorder(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.landed.append(f"{site.origin}{self.path}")
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.redirect = f"{self.origin}/callback"
        self.launch_uri = f"{self.origin}/launch"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def query(self, uri: str) -> dict[str, list[str]]:
        """The query of the last URL under ``uri`` the browser was sent to (not a favicon)."""
        last = [u for u in self.landed if u.startswith(f"{uri}?")][-1]
        return parse_qs(urlsplit(last).query)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def site() -> Iterator[AppSite]:
    running = AppSite()
    try:
        yield running
    finally:
        running.close()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


class Clinician:
    """Dr Ana Silva in the portal, in a browser context of her own."""

    def __init__(self, browser: Browser, server: Server, site: AppSite) -> None:
        self.server = server
        self.site = site
        self.context = browser.new_context()
        self.page: Page = self.context.new_page()

    def sign_in(self, then: str) -> None:
        self.page.goto(f"{self.server.url}/signin?next={then}")
        key = self.server.data_dir / "keys" / "dr-ana-silva.key"
        self.page.get_by_label("Key file").set_input_files(str(key))
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(lambda url: "/signin" not in url)

    def launch(self, patient: str) -> str:
        """An EHR launch of the app from the patient's page: the ``launch`` the app got."""
        self.sign_in(f"/clinician%3Fpatient%3D{patient}")
        self.page.get_by_test_id(f"launch-{CLIENT}").get_by_role("button").click()
        self.page.wait_for_url(f"{self.site.launch_uri}**")
        sent = self.site.query(self.site.launch_uri)
        assert sent["iss"] == [f"{self.server.url}/fhir"]
        return sent["launch"][0]

    def approve(self, launch: str, patient: str, nonce: str) -> dict[str, str]:
        """Authorize the app within ``launch`` (showing its patient) and approve: the token
        request the app would then make with the code it received."""
        verifier, challenge = pkce()
        query = urlencode({
            "response_type": "code", "client_id": CLIENT, "redirect_uri": self.site.redirect,
            "scope": SCOPE, "state": nonce, "aud": f"{self.server.url}/fhir", "launch": launch,
            "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256",
        })  # fmt: skip
        self.page.goto(f"{self.server.url}/auth/authorize?{query}")
        assert not self.page.url.startswith(self.site.origin), f"sent back: {self.page.url}"
        expect(self.page.get_by_test_id("launch-patient")).to_have_text(patient)
        self.page.get_by_test_id("approve").click()
        self.page.wait_for_url(f"{self.site.redirect}**")
        sent = self.site.query(self.site.redirect)
        assert sent["state"] == [nonce]
        return {"grant_type": "authorization_code", "code": sent["code"][0],
                "redirect_uri": self.site.redirect, "code_verifier": verifier,
                "client_id": CLIENT}  # fmt: skip

    def close(self) -> None:
        self.context.close()


def exchange(server: Server, body: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode(body), timeout=30)


def reads(server: Server, tokens: dict[str, Any], patient: str) -> int:
    bearer = {"authorization": f"Bearer {tokens['access_token']}"}
    url = f"{server.url}/fhir/Condition?patient={patient}"
    return httpx.get(url, headers=bearer, timeout=30).status_code


def refused(answer: httpx.Response) -> bool:
    return answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_codes_and_launches_made_before_a_restart_work_after_it(
    server: Server, browser: Browser, site: AppSite
) -> None:
    who = sorted((server.data_dir / "keys" / "patients").glob("*.key"))[0].stem
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        registered = admin.post("/v1/apps", json={
            "client_id": CLIENT, "name": "Restart App", "kind": "public",
            "redirect_uris": [site.redirect], "launch_uri": site.launch_uri,
            "scopes": SCOPE})  # fmt: skip
        assert registered.status_code == 201, registered.text
    before = Clinician(browser, server, site)
    try:
        launch = before.launch(who)
        spent_body = before.approve(launch, who, "spent-before")
        waiting_body = before.approve(launch, who, "waiting-before")  # not exchanged yet
    finally:
        before.close()
    spent = exchange(server, spent_body)
    assert spent.status_code == 200, spent.text
    assert reads(server, spent.json(), who) == 200

    server.kill9()  # no clean shutdown: what was acknowledged must be on disk already
    server.start()

    # the code issued before the restart: exchanged once, with all it stood for
    answer = exchange(server, waiting_body)
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert tokens["patient"] == who and tokens["scope"] == SCOPE
    identity = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert identity["nonce"] == "waiting-before" and identity["aud"] == CLIENT
    assert identity["fhirUser"] == f"{server.url}/fhir/Practitioner/dr-ana-silva"
    assert reads(server, tokens, who) == 200
    # and never again: used a second time, what it gave is revoked (RFC 6749 4.1.2)
    assert refused(exchange(server, waiting_body))
    assert reads(server, tokens, who) == 401
    # the code spent before the restart: its token still works until the code is replayed
    assert reads(server, spent.json(), who) == 200
    assert refused(exchange(server, spent_body))
    assert reads(server, spent.json(), who) == 401

    # the launch made before the restart still names its patient, for a new sign-in
    after = Clinician(browser, server, site)
    try:
        after.sign_in("/clinician")
        body = after.approve(launch, who, "after")
    finally:
        after.close()
    with ThreadPoolExecutor(6) as pool:  # the same code six times at once: one exchange
        answers = list(pool.map(lambda _: exchange(server, body), range(6)))
    won = [a for a in answers if a.status_code == 200]
    assert len(won) == 1, [a.text for a in answers]
    assert all(refused(a) for a in answers if a is not won[0])
    assert won[0].json()["patient"] == who
    # no code ever reached the node's log
    log = server.log.read_text()
    for sent in (spent_body, waiting_body, body):
        assert sent["code"] not in log
