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
from playwright.sync_api import Browser, Page, expect

from tests.support.nodes import Server, demo_node, free_port, login, run_cli, serving

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "e2e" / "screenshots"  # copied into docs/screenshots
REDIRECT_PORT = free_port()
REDIRECT = f"http://127.0.0.1:{REDIRECT_PORT}/callback"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("smart") / "node"
    demo_node(data, with_supply=False)
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
        "patient/Observation.rs?category=laboratory patient/Observation.c "
        "patient/Observation.cud?category=laboratory user/*.rs user/Observation.rs",
    )
    return "acme-charting"


def authorize_in_browser(
    browser: Browser, server: Server, url: str, key: Path, patient: str | None = None
) -> str:
    """Follow an authorize URL as the user: sign in with the key file, (name the patient,)
    approve; the URL the app's redirect URI received."""
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
        assert page.evaluate("() => window.top === window.self")
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "smart-authorize.png"), full_page=True)
        if patient is not None:
            page.get_by_label("Which patient (their id)").fill(patient)
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
        page.screenshot(path=str(SHOTS / "patient-access-log.png"), full_page=True)
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
    browser: Browser,
    server: Server,
    client_id: str,
    scope: str,
    key: Path,
    replay: bool = False,
    patient: str | None = None,
) -> dict[str, Any]:
    """An authorization-code flow by hand, as the spec writes it (PKCE S256)."""
    verifier, challenge = pkce()
    state = uuid.uuid4().hex
    query = urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "scope": scope, "state": state, "aud": f"{server.url}/fhir",
        "code_challenge": challenge, "code_challenge_method": "S256",
    })  # fmt: skip
    landed = authorize_in_browser(
        browser, server, f"{server.url}/auth/authorize?{query}", key, patient
    )
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


# -- what the security review found (each was reproduced before it was fixed) ----------------


def bearer(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def two_patients(server: Server) -> list[str]:
    return sorted(k.stem for k in (server.data_dir / "keys" / "patients").glob("*.key"))[:2]


def test_an_apps_token_opens_the_fhir_api_only(
    server: Server, browser: Browser, patient_app: str, two_patients: list[str]
) -> None:
    """An app approved by an admin cannot use the token on the rest of the API (apps, ...)."""
    first = two_patients[0]
    tokens = code_flow(browser, server, patient_app, "launch/patient user/*.rs",
                       server.data_dir / "keys" / "st-mary-admin.key", patient=first)  # fmt: skip
    with bearer(server, tokens["access_token"]) as http:
        grab = http.post("/v1/apps", json={"client_id": "grab-app", "name": "Grab",
                         "kind": "public", "redirect_uris": [REDIRECT], "scopes": "user/*.rs"})  # fmt: skip
        assert grab.status_code == 403 and grab.json()["code"] == "SCOPE"
        assert http.get("/v1/auth/whoami").status_code == 403
        assert http.get(f"/fhir/Observation?patient={first}&_count=1").status_code == 200


def test_a_patient_scope_reaches_the_launch_patient_only(
    server: Server, browser: Browser, patient_app: str, two_patients: list[str]
) -> None:
    first, second = two_patients
    tokens = code_flow(browser, server, patient_app,
                       "launch/patient patient/*.rs user/Observation.rs",
                       server.data_dir / "keys" / "dr-ana-silva.key", patient=first)  # fmt: skip
    assert tokens["patient"] == first
    with bearer(server, tokens["access_token"]) as http:
        assert http.get(f"/fhir/Condition?patient={first}").status_code == 200
        other = http.get(f"/fhir/Condition?patient={second}")
        assert other.status_code == 403 and other.headers["x-careledger-code"] == "SCOPE"
        assert http.get(f"/fhir/Observation?patient={second}&_count=1").status_code == 200


def test_restrictions_and_v2_letters_hold_in_batches_and_deletes(
    server: Server, browser: Browser, patient_app: str, patient: tuple[str, Path]
) -> None:
    who, key = patient
    labs_only = code_flow(browser, server, patient_app,
                          "launch/patient patient/Observation.rs?category=laboratory", key)  # fmt: skip
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {
        "method": "GET", "url": f"Observation?patient={who}&category=vital-signs"}}]}  # fmt: skip
    with bearer(server, labs_only["access_token"]) as http:
        answer = http.post("/fhir", content=json.dumps(batch),
                           headers={"content-type": "application/fhir+json"})  # fmt: skip
        assert answer.status_code == 200
        found = answer.json()["entry"][0].get("resource", {})
        assert not found.get("entry"), "a vital sign came back under a laboratory-only scope"
        vitals = http.get(f"/fhir/Observation?patient={who}&_count=200")
    # the ids of a vital sign and a lab result, read with the patient's own token
    with login(server, key) as own:
        every = own.get(f"/fhir/Observation?patient={who}&_count=200").json()["entry"]
    kinds = {e["resource"]["id"]: {c["code"] for cat in e["resource"].get("category", [])
                                   for c in cat["coding"]} for e in every}  # fmt: skip
    vital = next(i for i, k in kinds.items() if "vital-signs" in k)
    assert vitals.status_code == 200
    create_only = code_flow(browser, server, patient_app,
                            "launch/patient patient/Observation.c", key)  # fmt: skip
    with bearer(server, create_only["access_token"]) as http:
        assert http.delete(f"/fhir/Observation/{vital}").status_code == 403
        assert http.get(f"/fhir/Observation/{vital}").status_code == 403
    lab_writes = code_flow(browser, server, patient_app,
                           "launch/patient patient/Observation.cud?category=laboratory", key)  # fmt: skip
    with bearer(server, lab_writes["access_token"]) as http:
        assert http.delete(f"/fhir/Observation/{vital}").status_code == 403
    with login(server, key) as own:
        assert own.get(f"/fhir/Observation/{vital}").status_code == 200  # still there


def test_the_token_audience_is_the_configured_origin_not_the_host_header(
    server: Server, admin: httpx.Client
) -> None:
    alg, private, public = KEYS[1]
    register(admin, client_id="host-test", name="Host test", kind="backend",
             scopes="system/*.rs", jwks={"keys": [public]})  # fmt: skip
    spoofed = assertion(server, "host-test", alg, private, aud="http://other.example/auth/token")
    body = urlencode({"grant_type": "client_credentials", "scope": "system/*.rs",
                      "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                      "client_assertion": spoofed})  # fmt: skip
    answer = httpx.post(f"{server.url}/auth/token", content=body,
                        headers={**FORM, "host": "other.example"})  # fmt: skip
    assert answer.status_code == 401
    config = httpx.get(f"{server.url}/.well-known/smart-configuration",
                       headers={"host": "evil.example"}).json()  # fmt: skip
    assert config["token_endpoint"] == f"{server.url}/auth/token"


def test_portal_pages_cannot_be_framed_and_introspection_is_for_servers(
    server: Server, patient_app: str, admin: httpx.Client
) -> None:
    page = httpx.get(f"{server.url}/signin")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    token = admin.headers["authorization"].split()[1]
    public = httpx.post(f"{server.url}/auth/introspect", headers=FORM,
                        content=urlencode({"token": token, "client_id": patient_app}))  # fmt: skip
    assert public.status_code == 401
    as_admin = admin.post("/auth/introspect", headers=FORM, content=urlencode({"token": token}))
    assert as_admin.status_code == 200 and as_admin.json()["active"] is True
    nothing = admin.post("/auth/introspect", headers=FORM, content=urlencode({"token": "x.y.z"}))
    assert nothing.json() == {"active": False}
    vary = httpx.get(f"{server.url}/.well-known/smart-configuration",
                     headers={"origin": "http://evil.example"})  # fmt: skip
    assert "Origin" in vary.headers.get("vary", "")


def test_an_ehr_launch_from_the_portal_carries_the_patient(
    server: Server, browser: Browser, admin: httpx.Client, patient: tuple[str, Path]
) -> None:
    who = patient[0]
    launch_uri = f"http://127.0.0.1:{REDIRECT_PORT}/launch"
    register(admin, client_id="ehr-app", name="EHR App", kind="public",
             redirect_uris=[REDIRECT], launch_uri=launch_uri,
             scopes="launch openid fhirUser patient/*.rs")  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    landed: list[str] = []
    page.route(f"http://127.0.0.1:{REDIRECT_PORT}/**", lambda route: (
        landed.append(route.request.url), route.fulfill(body="ok")))  # fmt: skip
    try:
        page.goto(f"{server.url}/signin?next=/clinician%3Fpatient%3D{who}")
        page.get_by_label("Key file").set_input_files(
            str(server.data_dir / "keys" / "dr-ana-silva.key")
        )
        page.get_by_role("button", name="Sign in").click()
        page.get_by_test_id("launch-ehr-app").get_by_role("button").click()
        page.wait_for_url(f"{launch_uri}**")
        sent = parse_qs(urlsplit(landed[-1]).query)
        assert sent["iss"] == [f"{server.url}/fhir"] and sent["launch"]
        verifier, challenge = pkce()
        query = urlencode({
            "response_type": "code", "client_id": "ehr-app", "redirect_uri": REDIRECT,
            "scope": "launch openid fhirUser patient/*.rs", "state": "e1",
            "aud": sent["iss"][0], "launch": sent["launch"][0],
            "code_challenge": challenge, "code_challenge_method": "S256",
        })  # fmt: skip
        page.goto(f"{server.url}/auth/authorize?{query}")
        expect(page.get_by_test_id("launch-patient")).to_have_text(who)
        page.get_by_test_id("approve").click()
        page.wait_for_url(f"{REDIRECT}**")
    finally:
        context.close()
    code = parse_qs(urlsplit(landed[-1]).query)["code"][0]
    answer = httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode({
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier, "client_id": "ehr-app"})).json()  # fmt: skip
    assert answer["patient"] == who and answer["need_patient_banner"] is True
    identity = jwt.decode(answer["id_token"], options={"verify_signature": False})
    assert identity["fhirUser"].endswith("/Practitioner/dr-ana-silva")
    # another user cannot use this launch: it is the clinician's, for this app
    with bearer(server, answer["access_token"]) as http:
        assert http.get(f"/fhir/Condition?patient={who}").status_code == 200


def test_revoking_a_refresh_token_ends_the_grant(
    server: Server, browser: Browser, patient_app: str, patient: tuple[str, Path]
) -> None:
    tokens = code_flow(browser, server, patient_app, "launch/patient offline_access patient/*.rs",
                       patient[1])  # fmt: skip
    revoke = httpx.post(f"{server.url}/auth/revoke", headers=FORM, content=urlencode(
        {"token": tokens["refresh_token"], "client_id": patient_app}))  # fmt: skip
    assert revoke.status_code == 200
    with bearer(server, tokens["access_token"]) as http:
        assert http.get(f"/fhir/Condition?patient={patient[0]}").status_code == 401
    refresh = httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode({
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": patient_app}))  # fmt: skip
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    unknown = httpx.post(f"{server.url}/auth/revoke", headers=FORM,
                         content=urlencode({"token": "nothing", "client_id": patient_app}))  # fmt: skip
    assert unknown.status_code == 200  # RFC 7009: whatever the token was


def test_access_events_are_balp_audit_events_searchable_and_proven(
    server: Server, admin: httpx.Client, patient: tuple[str, Path]
) -> None:
    from fhir.resources.R4B.auditevent import AuditEvent

    who, key = patient
    alg, private, public = KEYS[2]
    register(admin, client_id="audit-probe", name="Audit probe", kind="backend",
             scopes="system/*.rs", jwks={"keys": [public]})  # fmt: skip
    token = backend_token(server, assertion(server, "audit-probe", alg, private)).json()
    with bearer(server, token["access_token"]) as app:
        found = app.get(f"/fhir/Observation?patient={who}&_count=2",
                        headers={"x-purpose-of-use": "HOPERAT"}).json()  # fmt: skip
    read_ids = [e["resource"]["id"] for e in found["entry"]]
    with login(server, key) as own:
        everything = own.get(f"/fhir/AuditEvent?patient={who}")
        assert everything.status_code == 200
        events = [e["resource"] for e in everything.json()["entry"]]
        for event in events:
            AuditEvent.model_validate(event)
        by_app = own.get(f"/fhir/AuditEvent?patient={who}&altid=audit-probe").json()
        (mine,) = [e["resource"] for e in by_app["entry"]]
        # a search: BALP's query (r7 records the interaction)
        assert mine["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientQuery")
        assert {e.get("what", {}).get("reference") for e in mine["entity"]} >= {
            f"Observation/{r}" for r in read_ids
        }
        assert mine["agent"][0]["policy"] == ["urn:careledger:custodian"]
        for query, expected in (
            (f"entity=Observation/{read_ids[0]}", True),
            ("action=E", True),
            ("action=R", False),
            ("subtype=search-type", True),
            ("date=ge2000-01-01", True),
            ("date=lt2000-01-01", False),
            ("agent=Organization/st-mary", True),
            ("policy=urn:careledger:custodian", True),
        ):
            hits = own.get(f"/fhir/AuditEvent?patient={who}&altid=audit-probe&{query}").json()
            assert (hits["total"] == 1) is expected, query
        assert own.get(f"/fhir/AuditEvent?patient={who}&nonsense=1").status_code == 400
        created = own.get(f"/fhir/AuditEvent?patient={who}&action=C").json()  # the import
        assert created["total"] >= 1
        assert created["entry"][0]["resource"]["meta"]["profile"][0].endswith("PatientCreate")
        # a delete is an access too (BALP PatientDelete), logged before the record is shredded
        gone = read_ids[1]
        assert own.delete(f"/fhir/Observation/{gone}").status_code == 200
        deleted = own.get(f"/fhir/AuditEvent?patient={who}&action=D").json()
        (erased,) = [e["resource"] for e in deleted["entry"]]
        assert erased["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientDelete")
        assert f"Observation/{gone}" in {e.get("what", {}).get("reference")
                                         for e in erased["entity"]}  # fmt: skip
        assert own.get(f"/fhir/Observation/{gone}").status_code == 410
        one = own.get(f"/fhir/AuditEvent/{mine['id']}")
        assert one.status_code == 200 and one.json() == mine
        proof = {x["url"]: x for x in mine["extension"][0]["extension"]}["proof"]["valueUri"]
        assert own.get(proof.removeprefix(server.url)).status_code == 200  # its inclusion proof
    with login(server, server.data_dir / "keys" / "dr-ben-okafor.key") as stranger:
        assert stranger.get(f"/fhir/AuditEvent/{mine['id']}").status_code == 404
        assert stranger.get(f"/fhir/AuditEvent?patient={who}").status_code == 403
    statement = httpx.get(f"{server.url}/fhir/metadata").json()
    audit = next(r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert {p["name"] for p in audit["searchParam"]} == {
        "patient", "date", "agent", "altid", "entity", "action", "subtype", "policy"}  # fmt: skip


def test_a_user_sees_and_stops_the_apps_they_let_in(
    server: Server, browser: Browser, patient_app: str, patient: tuple[str, Path]
) -> None:
    tokens = code_flow(browser, server, patient_app, "launch/patient offline_access patient/*.rs",
                       patient[1])  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        page.goto(f"{server.url}/signin?next=/me/apps")
        page.get_by_label("Key file").set_input_files(str(patient[1]))
        page.get_by_role("button", name="Sign in").click()
        grants = page.get_by_test_id("app-grants")
        expect(grants).to_contain_text("Acme Charting")
        expect(grants).to_contain_text("Read and search this patient's records of every kind")
        before = grants.get_by_role("button", name="Stop").count()
        grants.get_by_role("button", name="Stop").first.click()
        expect(grants.get_by_role("button", name="Stop")).to_have_count(before - 1)
    finally:
        context.close()
    refresh = httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode({
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": patient_app}))  # fmt: skip
    assert refresh.status_code == 400  # the newest grant was stopped, at once
    config = httpx.get(f"{server.url}/.well-known/smart-configuration").json()
    assert config["management_endpoint"] == f"{server.url}/me/apps"
