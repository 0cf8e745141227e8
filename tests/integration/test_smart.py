"""SMART on FHIR over real HTTP (issue 17): discovery, apps registered on the ledger, the
authorization-code flow driven by SMART's own Python client (``fhirclient``) with the user
signing in and approving in Chromium, refresh-token rotation and reuse detection, Backend
Services with ``private_key_jwt`` (a JOSE library signs the assertions), introspection,
revocation, suspension, v2 query-restricted scopes, and the app named in the patient's log."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fhirclient import client as smart_client
from fhirclient.models.observation import Observation
from playwright.sync_api import Browser, Page, expect, sync_playwright

from careledger.nodedir import init_demo
from tests.support.nodes import Server, free_port, login, run_cli, serving

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
REDIRECT_PORT = free_port()
REDIRECT = f"http://127.0.0.1:{REDIRECT_PORT}/callback"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("smart") / "node"
    init_demo(data, with_supply=False).store.close()
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def patient(server: Server) -> tuple[str, Path]:
    """A demo patient with records (a Synthea patient whose key the node holds)."""
    key = sorted((server.data_dir / "keys" / "patients").glob("*.key"))[0]
    return key.stem, key


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as http:
        yield http


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.skip("no /usr/bin/chromium and not root to install it (scripts/)")
        raise AssertionError("/usr/bin/chromium is missing: run scripts/install-system-deps.sh")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


def register(admin: httpx.Client, **app: Any) -> dict[str, Any]:
    answer = admin.post("/v1/apps", json=app)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


@pytest.fixture(scope="module")
def patient_app(admin: httpx.Client) -> str:
    register(
        admin,
        client_id="acme-charting",
        name="Acme Charting",
        kind="public",
        redirect_uris=[REDIRECT],
        scopes="launch/patient openid fhirUser offline_access patient/*.rs "
        "patient/Observation.rs?category=laboratory user/*.rs",
    )
    return "acme-charting"


def authorize_in_browser(browser: Browser, server: Server, url: str, key: Path) -> str:
    """Follow an authorize URL as the user: sign in with the key file, approve; the URL the
    app's redirect URI received."""
    context = browser.new_context()
    page: Page = context.new_page()
    landed: list[str] = []
    page.route(f"{REDIRECT}**", lambda route: (landed.append(route.request.url),
                                               route.fulfill(body="ok")))  # fmt: skip
    try:
        page.goto(url)
        page.get_by_label("Key file").set_input_files(str(key))
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_test_id("authorize-title")).to_contain_text("Acme Charting")
        page.get_by_test_id("approve").click()
        page.wait_for_url(f"{REDIRECT}**")
    finally:
        context.close()
    assert landed, "the redirect URI was never reached"
    return landed[-1]


def test_discovery_lists_what_the_server_does(server: Server) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        config = httpx.get(f"{server.url}{path}").json()
        assert config["authorization_endpoint"] == f"{server.url}/auth/authorize"
        assert config["token_endpoint"] == f"{server.url}/auth/token"
        assert config["code_challenge_methods_supported"] == ["S256"]
        assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
        assert "permission-v2" in config["capabilities"]
    metadata = httpx.get(f"{server.url}/fhir/metadata").json()
    security = metadata["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == f"{server.url}/auth/authorize"
    keys = httpx.get(f"{server.url}/.well-known/jwks.json").json()["keys"]
    assert keys[0]["kty"] == "RSA" and "d" not in keys[0]


def test_a_patient_signs_in_to_an_app_with_the_python_smart_client(
    server: Server,
    browser: Browser,
    admin: httpx.Client,
    patient_app: str,
    patient: tuple[str, Path],
) -> None:
    who, key = patient
    settings = {
        "app_id": patient_app,
        "api_base": f"{server.url}/fhir",
        "redirect_uri": REDIRECT,
        "scope": "launch/patient openid fhirUser offline_access patient/*.rs",
    }
    app = smart_client.FHIRClient(settings=settings)
    url = app.authorize_url
    assert url.startswith(f"{server.url}/auth/authorize?")
    landed = authorize_in_browser(browser, server, url, key)
    app.handle_callback(landed)
    assert app.ready and app.patient_id == who
    auth = app.server.auth
    assert auth.refresh_token
    search = Observation.where({"patient": who, "_count": "5"})
    found = list(search.perform_resources_iter(app.server))
    assert found and all(o.subject.reference.endswith(who) for o in found)
    # the access is on the ledger, naming the app
    with login(server, key) as me:
        log = me.get(f"/v1/patients/{who}/access-log").json()
    assert any(e.get("app") == patient_app for e in log["accesses"])
    context = browser.new_context()
    page = context.new_page()
    try:  # and in words, in the patient's own "who saw my data"
        page.goto(f"{server.url}/signin?next=/me/access")
        page.get_by_label("Key file").set_input_files(str(key))
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_test_id("via-app").first).to_have_text("via Acme Charting")
    finally:
        context.close()
    # refresh rotates; the rotated token used again revokes the whole grant
    first = auth.refresh_token
    assert app.reauthorize() is not None
    assert auth.refresh_token and auth.refresh_token != first
    reuse = httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode(
        {"grant_type": "refresh_token", "refresh_token": first, "client_id": patient_app}))  # fmt: skip
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    denied = httpx.get(
        f"{server.url}/fhir/Observation?patient={who}",
        headers={"authorization": f"Bearer {auth.access_token}"},
    )
    assert denied.status_code == 401 and "invalid_token" in denied.headers["www-authenticate"]


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


def code_flow(
    browser: Browser, server: Server, client_id: str, scope: str, key: Path, replay: bool = False
) -> dict[str, Any]:
    """An authorization-code flow by hand, as the spec writes it (PKCE S256)."""
    verifier, challenge = pkce()
    state = uuid.uuid4().hex
    query = urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "scope": scope, "state": state, "aud": f"{server.url}/fhir",
        "code_challenge": challenge, "code_challenge_method": "S256",
    })  # fmt: skip
    landed = authorize_in_browser(browser, server, f"{server.url}/auth/authorize?{query}", key)
    params = parse_qs(urlsplit(landed).query)
    assert params["state"] == [state]
    body = {"grant_type": "authorization_code", "code": params["code"][0],
            "redirect_uri": REDIRECT, "code_verifier": verifier, "client_id": client_id}  # fmt: skip
    answer = httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode(body))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    if replay:  # a code is used once; used again, what it gave is revoked (RFC 6749 4.1.2)
        again = httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode(body))
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        bearer = {"authorization": f"Bearer {answer.json()['access_token']}"}
        assert httpx.get(f"{server.url}/fhir/Observation", headers=bearer).status_code == 401
    return dict(answer.json())


def test_a_query_restricted_scope_reaches_laboratory_results_only(
    request: pytest.FixtureRequest,
    server: Server,
    browser: Browser,
    patient_app: str,
    patient: tuple[str, Path],
) -> None:
    who, key = patient
    tokens = code_flow(
        browser, server, patient_app,
        "launch/patient openid fhirUser patient/Observation.rs?category=laboratory",
        key,
    )  # fmt: skip
    # the id_token: the node's RS256 key, for this app, naming the user and their FHIR record
    published = httpx.get(f"{server.url}/.well-known/jwks.json").json()["keys"][0]
    identity = jwt.decode(tokens["id_token"], jwt.PyJWK(published, algorithm="RS256").key,
                          algorithms=["RS256"], audience=patient_app, issuer=server.url)  # fmt: skip
    assert identity["sub"] == who
    assert identity["fhirUser"] == f"{server.url}/fhir/Patient/{who}"
    assert tokens["patient"] == who and "refresh_token" not in tokens
    bearer = {"authorization": f"Bearer {tokens['access_token']}"}
    http = httpx.Client(base_url=server.url, headers=bearer)
    request.addfinalizer(http.close)
    labs = http.get(f"/fhir/Observation?patient={who}&_count=200").json()
    categories = [
        {c["code"] for cat in e["resource"].get("category", []) for c in cat["coding"]}
        for e in labs.get("entry", [])
        if e["resource"]["resourceType"] == "Observation"
    ]
    assert categories and all("laboratory" in c for c in categories)
    assert http.get(f"/fhir/Patient/{who}/$everything").status_code == 403
    assert http.get(f"/fhir/Condition?patient={who}").status_code == 403


def test_a_code_used_twice_revokes_what_it_gave(
    server: Server, browser: Browser, patient_app: str, patient: tuple[str, Path]
) -> None:
    code_flow(browser, server, patient_app, "launch/patient patient/*.rs", patient[1], replay=True)


def test_bad_authorization_requests(server: Server, patient_app: str) -> None:
    _, challenge = pkce()
    good = {"response_type": "code", "client_id": patient_app, "redirect_uri": REDIRECT,
            "scope": "patient/*.rs", "state": "s1", "aud": f"{server.url}/fhir",
            "code_challenge": challenge, "code_challenge_method": "S256"}  # fmt: skip
    html = {"accept": "text/html"}

    def ask(**change: str) -> httpx.Response:
        query = urlencode({k: v for k, v in {**good, **change}.items() if v})
        return httpx.get(f"{server.url}/auth/authorize?{query}", headers=html)

    # an unknown app or an unregistered redirect URI: shown to the user, never redirected
    for bad in ({"client_id": "nobody-app"}, {"redirect_uri": "https://evil.example/cb"}):
        answer = ask(**bad)
        assert answer.status_code == 400 and "evil" not in answer.headers.get("location", "")
    # the rest goes back to the app with an OAuth error and its state
    for change, error in (
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"aud": "https://other.example/fhir"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "patient/*.rs bogus/scope"}, "invalid_scope"),
    ):
        answer = ask(**change)
        assert answer.status_code == 303, change
        sent = parse_qs(urlsplit(answer.headers["location"]).query)
        assert sent["error"] == [error] and sent["state"] == ["s1"]
    # signed out: to the sign-in page, and back here afterwards
    answer = ask()
    assert answer.status_code == 303 and answer.headers["location"].startswith("/signin?next=")


# -- Backend Services -----------------------------------------------------------------------


def _keys() -> list[tuple[str, Any, dict[str, Any]]]:
    """(alg, private key, public JWK) for RS384, ES384 and EdDSA."""
    made = []
    for alg, private in (
        ("RS384", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES384", ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ):
        algorithm = jwt.get_algorithm_by_name(alg)
        public = json.loads(algorithm.to_jwk(private.public_key()))
        made.append((alg, private, {**public, "kid": f"k-{alg.lower()}", "alg": alg}))
    return made


KEYS = _keys()


def assertion(server: Server, client_id: str, alg: str, private: Any, **change: Any) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": f"{server.url}/auth/token",
              "exp": now + 240, "jti": uuid.uuid4().hex, **change}  # fmt: skip
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": f"k-{alg.lower()}"})


def backend_token(server: Server, signed: str, scope: str = "system/*.rs") -> httpx.Response:
    body = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed,
    }
    return httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode(body))


def test_backend_services_with_private_key_jwt(
    request: pytest.FixtureRequest, server: Server, admin: httpx.Client, patient: tuple[str, Path]
) -> None:
    who = patient[0]
    register(admin, client_id="st-mary-analytics", name="St Mary's analytics", kind="backend",
             scopes="system/*.rs", jwks={"keys": [k for _, _, k in KEYS]})  # fmt: skip
    for alg, private, _ in KEYS:
        signed = assertion(server, "st-mary-analytics", alg, private)
        answer = backend_token(server, signed)
        assert answer.status_code == 200, (alg, answer.text)
        token = answer.json()
        assert token["scope"] == "system/*.rs" and "refresh_token" not in token
        replay = backend_token(server, signed)
        assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    alg, private, _ = KEYS[1]
    for change in (
        {"aud": f"{server.url}/other"},
        {"exp": int(time.time()) - 120},
        {"exp": int(time.time()) + 3600},  # too long-lived
        {"sub": "someone-else"},
    ):
        refused = backend_token(
            server, assertion(server, "st-mary-analytics", alg, private, **change)
        )
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client", change
    stranger = ec.generate_private_key(ec.SECP384R1())
    forged = backend_token(server, assertion(server, "st-mary-analytics", "ES384", stranger))
    assert forged.status_code == 401
    beyond = backend_token(server, assertion(server, "st-mary-analytics", alg, private),
                           scope="system/*.cruds")  # fmt: skip
    assert beyond.status_code == 400 and beyond.json()["error"] == "invalid_scope"
    # the app reads its organisation's records as custodian, and the access names it
    token = backend_token(server, assertion(server, "st-mary-analytics", alg, private)).json()
    http = httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token['access_token']}"}
    )
    request.addfinalizer(http.close)
    read = http.get(
        f"/fhir/Observation?patient={who}&_count=3", headers={"x-purpose-of-use": "HOPERAT"}
    )
    assert read.status_code == 200 and read.json()["entry"], read.text
    # introspection (as the app) and revocation
    introspected = httpx.post(
        f"{server.url}/auth/introspect", headers=FORM,
        content=urlencode({"token": token["access_token"],
                           "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                           "client_assertion": assertion(server, "st-mary-analytics", alg, private)}),
    ).json()  # fmt: skip
    assert introspected["active"] is True and introspected["client_id"] == "st-mary-analytics"
    # suspension stops its tokens at once
    assert (
        admin.post("/v1/apps/st-mary-analytics/suspend", json={"reason": "test"}).status_code == 200
    )
    stopped = http.get(f"/fhir/Observation?patient={who}")
    assert stopped.status_code == 401 and "www-authenticate" in stopped.headers
    again = backend_token(server, assertion(server, "st-mary-analytics", alg, private))
    assert again.status_code == 401


def test_registration_is_for_admins_and_checked(server: Server, admin: httpx.Client) -> None:
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as clinician:
        refused = clinician.post("/v1/apps", json={"client_id": "mine-app", "name": "Mine",
                                 "kind": "public", "redirect_uris": [REDIRECT], "scopes": "user/*.rs"})  # fmt: skip
        assert refused.status_code in (403, 422) and refused.json()["code"] == "NOT_AUTHORISED"
        listed = clinician.get("/v1/apps").json()["items"]
        assert all("secret_hash" not in a for a in listed)
    confidential = register(admin, client_id="acme-billing", name="Acme billing", kind="confidential",
                            redirect_uris=["https://billing.example/cb"], scopes="user/*.rs")  # fmt: skip
    secret = confidential["client_secret"]
    assert "secret_hash" not in confidential["app"]
    bad = httpx.post(f"{server.url}/auth/token", headers=FORM, auth=("acme-billing", "wrong"),
                     content=urlencode({"grant_type": "authorization_code", "code": "x",
                                        "redirect_uri": "https://billing.example/cb"}))  # fmt: skip
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    right = httpx.post(f"{server.url}/auth/token", headers=FORM, auth=("acme-billing", secret),
                       content=urlencode({"grant_type": "authorization_code", "code": "x",
                                          "redirect_uri": "https://billing.example/cb"}))  # fmt: skip
    assert right.status_code == 400 and right.json()["error"] == "invalid_grant"


def test_the_cli_registers_lists_and_suspends_apps(server: Server) -> None:
    where = ["--key", str(server.data_dir / "keys" / "st-mary-admin.key"), "--url", server.url]
    done = run_cli(
        "apps", "register", "cli-app", "--name", "CLI app", "--kind", "confidential",
        "--scopes", "user/*.rs", "--redirect", "https://cli.example/cb", *where, "--json",
        check=True,
    )  # fmt: skip
    assert json.loads(done.stdout)["client_secret"]
    listed = json.loads(run_cli("apps", "list", *where, "--json", check=True).stdout)["items"]
    assert {"cli-app"} <= {a["client_id"] for a in listed}
    table = run_cli("apps", "list", *where, check=True).stdout
    assert "CLI app" in table
    stopped = run_cli("apps", "suspend", "cli-app", "--reason", "test", *where, check=True)
    assert "suspended" in stopped.stdout
    bad = run_cli("apps", "register", "cli-bad", "--name", "Bad", "--scopes", "nonsense", *where)
    assert bad.returncode != 0 and "BAD_ARGS" in bad.stderr and "Traceback" not in bad.stderr


# -- SMART's JavaScript client, in the browser, from another origin --------------------------

JS_CLIENT = ROOT / "build" / "npm" / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
LAUNCH_HTML = """<!doctype html><meta charset="utf-8"><title>launch</title>
<script src="fhir-client.js"></script>
<script>FHIR.oauth2.authorize({clientId: "js-app", redirectUri: "index.html",
  scope: "launch/patient openid fhirUser patient/*.rs", iss: "%(iss)s", pkceMode: "required"});
</script>"""
INDEX_HTML = """<!doctype html><meta charset="utf-8"><title>app</title><pre id="out">waiting</pre>
<script src="fhir-client.js"></script>
<script>
FHIR.oauth2.ready().then(async (client) => {
  const bundle = await client.request("Observation?patient=" + client.patient.id + "&_count=3");
  document.getElementById("out").textContent = JSON.stringify({
    patient: client.patient.id, entries: (bundle.entry || []).length,
    user: client.user.fhirUser});
}).catch((e) => { document.getElementById("out").textContent = "ERROR " + e; });
</script>"""


@pytest.fixture(scope="module")
def js_app(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[str]:
    """A static SMART app served from its own origin (another port): the JS client in it."""
    if not JS_CLIENT.exists():
        raise AssertionError(f"{JS_CLIENT} is missing: run scripts/vendor-assets.sh")
    site = tmp_path_factory.mktemp("js-app")
    shutil.copy(JS_CLIENT, site / "fhir-client.js")
    (site / "launch.html").write_text(LAUNCH_HTML % {"iss": f"{server.url}/fhir"})
    (site / "index.html").write_text(INDEX_HTML)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_smarts_javascript_client_signs_in_from_another_origin(
    server: Server,
    browser: Browser,
    admin: httpx.Client,
    js_app: str,
    patient: tuple[str, Path],
) -> None:
    who, key = patient
    register(admin, client_id="js-app", name="JS Charting", kind="public",
             redirect_uris=[f"{js_app}/index.html"],
             scopes="launch/patient openid fhirUser patient/*.rs")  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{js_app}/launch.html")
        page.get_by_label("Key file").set_input_files(str(key))
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_test_id("authorize-title")).to_contain_text("JS Charting")
        page.get_by_test_id("approve").click()
        out = page.locator("#out")
        expect(out).not_to_have_text("waiting", timeout=20_000)
        shown = out.text_content() or ""
    finally:
        context.close()
    assert not shown.startswith("ERROR"), shown
    seen = json.loads(shown)
    assert seen["patient"] == who and seen["entries"] > 0
    assert seen["user"] == f"Patient/{who}" or seen["user"].endswith(f"/Patient/{who}")
    # CORS is for registered apps' origins only
    evil = httpx.options(f"{server.url}/auth/token", headers={
        "origin": "http://evil.example", "access-control-request-method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in evil.headers
