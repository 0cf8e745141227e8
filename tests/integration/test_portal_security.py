"""The portal and the API under attack (issue 15): CSRF from another port of the same host,
sign-out that revokes, bodies limited while they stream, challenge floods, bad bytes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from careledger.keyfile import generate_keypair, read_key_file
from careledger.sdk import Client, RemoteError
from careledger.web.routes import COOKIE, csrf_for
from tests.support.nodes import Server, demo_node, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("portal-security") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


def token_of(server: Server, member: str) -> str:
    keypair = read_key_file(server.data_dir / "keys" / f"{member}.key")[1]
    with Client(server.url, keypair=keypair) as client:
        return str(client.login())


def signed_in(server: Server, member: str) -> tuple[httpx.Client, str]:
    token = token_of(server, member)
    client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    kept = client.post("/session", json={"token": token}, headers={"origin": server.url})
    assert kept.status_code == 204, kept.text
    return client, token


def peak_rss(server: Server) -> int:
    """The server process's peak resident memory (VmHWM), in bytes."""
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def consent_form(csrf: str | None) -> dict[str, str]:
    form = {"org": "northside-clinic", "types": "*", "purpose": "TREAT", "days": "30"}
    return form if csrf is None else {**form, "csrf": csrf}


def test_a_page_on_another_port_cannot_grant_a_consent(server: Server) -> None:
    patient, token = signed_in(server, "patient-0001")
    evil = server.url.rsplit(":", 1)[0] + ":6666"  # same host, another port: same site
    for headers, form in (
        ({"origin": evil}, consent_form(csrf_for(token))),  # even knowing the value
        ({"origin": server.url}, consent_form(None)),  # same origin, no anti-forgery value
        ({"origin": server.url}, consent_form("0" * 32)),
        ({}, consent_form(csrf_for(token))),  # neither Origin nor Referer
    ):
        refused = patient.post("/me/consents", data=form, headers=headers)
        assert refused.status_code == 403 and refused.json()["code"] == "CSRF", refused.text
    passed = patient.post(
        "/me/consents", data=consent_form(csrf_for(token)), headers={"origin": server.url}
    )
    # Past the guard, the route itself answers: this demo patient holds their own key.
    assert passed.json()["code"] == "SIGN_YOURSELF", passed.text
    page = patient.get("/me/consents").text
    assert f'name="csrf" value="{csrf_for(token)}"' in page  # every form carries it
    patient.close()


def test_session_refuses_cross_site_and_non_json_bodies(server: Server) -> None:
    token = token_of(server, "dr-ana-silva")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        cross = client.post(
            "/session", json={"token": token}, headers={"origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and cross.json()["code"] == "CSRF"
        form = client.post("/session", data={"token": token}, headers={"origin": server.url})
        assert form.status_code == 400 and form.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
        junk = client.post(
            "/session",
            content=b"\xff\xfe{",
            headers={"origin": server.url, "content-type": "application/json"},
        )
        assert junk.status_code == 400


def test_signing_out_revokes_the_token_at_once(server: Server) -> None:
    portal, token = signed_in(server, "dr-ana-silva")
    bearer = {"authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.url}/v1/auth/whoami", headers=bearer).status_code == 200
    out = portal.post("/signout", data={"csrf": csrf_for(token)}, headers={"origin": server.url})
    assert out.status_code == 303
    after = httpx.get(f"{server.url}/v1/auth/whoami", headers=bearer)
    assert after.status_code == 401 and after.json()["code"] == "TOKEN_REVOKED"
    portal.cookies.set(COOKIE, token)
    assert "Sign out" not in portal.get("/me").text
    portal.close()


def test_non_utf8_forms_are_a_clear_400(server: Server) -> None:
    patient, token = signed_in(server, "patient-0002")
    bad = patient.post(
        "/me/consents",
        content=b"org=\xff\xfe&csrf=" + csrf_for(token).encode(),
        headers={"origin": server.url, "content-type": "application/x-www-form-urlencoded"},
    )
    # The anti-forgery check reads the form leniently; the route refuses the bytes clearly.
    assert bad.status_code == 400 and bad.json()["code"] == "BAD_FORM", bad.text
    patient.close()


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/federation/read", 64 * 1024), ("/session", 64 * 1024), ("/v1/auth/token", 1 << 20)],
)
def test_bodies_are_refused_while_they_stream(server: Server, path: str, limit: int) -> None:
    """600 MiB sent chunked: the node never holds it (its peak memory barely moves)."""
    sent = 0
    peak_before = peak_rss(server)

    def body() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"x" * 65536
        for _ in range(600 * 16):  # up to 600 MiB, chunked: no Content-Length to refuse early
            sent += len(chunk)
            yield chunk

    started = time.monotonic()
    try:
        answer = httpx.post(
            f"{server.url}{path}", content=body(), headers={"origin": server.url}, timeout=30
        )
        # 413 as the limit passes, or an earlier refusal (a federation request must be signed
        # first): either way the node stopped reading long before the body ended.
        assert 400 <= answer.status_code < 500
    except httpx.TransportError:
        pass  # the node answered and closed the connection while the client was still sending
    assert sent > 0 and time.monotonic() - started < 30
    grown = peak_rss(server) - peak_before
    assert grown < 64 * 1024 * 1024, f"the node's peak memory grew by {grown} bytes"
    declared = httpx.post(f"{server.url}{path}", content=b"x" * (limit + 1))
    assert declared.status_code == 413


def test_a_challenge_flood_does_not_block_logins(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(300):
            assert client.post("/v1/auth/challenge").status_code == 200
    assert token_of(server, "dr-ana-silva")  # signs in at once


def test_one_members_writes_are_rate_and_size_limited(server: Server) -> None:
    """The attack: one patient key stored 300 junk transactions (37 MB) in two seconds."""
    keypair = read_key_file(server.data_dir / "keys" / "patient-0003.key")[1]
    junk = {"guardians": ["x" * 60], "threshold": 1, "note": "j" * 60_000}
    accepted_bytes = 0
    refused = None
    with Client(server.url, keypair=keypair) as client:
        for _ in range(30):  # 300 in batches of 10, as fast as the node takes them
            batch = [client.build("identity", "set_recovery", junk) for _ in range(10)]
            answer = httpx.post(f"{server.url}/v1/tx", json=batch, timeout=30)
            if answer.status_code == 429:
                refused = answer
                break
            assert answer.status_code == 202, answer.text
            accepted_bytes += len(answer.request.content)
    assert refused is not None, "300 junk transactions were all taken"
    assert refused.json()["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) >= 1
    assert accepted_bytes <= 6 * 1024 * 1024
    other = read_key_file(server.data_dir / "keys" / "st-mary-admin.key")[1]
    with Client(server.url, keypair=other) as client:  # another member is not held back
        args = {"id": "rn-budget", "name": "RN", "roles": ["nurse"]}
        receipt = client.call(
            "identity", "add_member", {**args, "public_key": generate_keypair().public_b64}
        )
    assert receipt["result"] == "accepted"


def test_the_clinicians_consent_list_follows_the_consent_rule(server: Server) -> None:
    """The portal kept its own copy of consent coverage: it ignored start time, purpose and
    types. A research-only consent, or one that starts next week, lets no clinician in."""
    patient_key = read_key_file(server.data_dir / "keys" / "patient-0003.key")[1]
    base = {
        "patient": "patient-0003",
        "grantee": {"org": "st-mary"},
        "actions": ["read"],
        "resource_types": ["*"],
    }
    week = 7 * 86_400_000
    with Client(server.url, keypair=patient_key) as patient:
        patient.call("consent", "grant", {**base, "purposes": ["HRESCH"]})
        later = int(time.time() * 1000) + week
        patient.call("consent", "grant", {**base, "purposes": ["TREAT"], "start": later})
    portal, _ = signed_in(server, "dr-ana-silva")
    assert "patient-0003" not in portal.get("/clinician").text
    with Client(server.url, keypair=patient_key) as patient:
        patient.call("consent", "grant", {**base, "purposes": ["TREAT"]})
    assert "patient-0003" in portal.get("/clinician").text
    portal.close()


def test_a_patients_key_recovery_is_in_their_own_log(server: Server) -> None:
    """A recovery path set by the patient, then used: both are in the patient's log (API and
    portal), and the lost key no longer signs in."""
    member = "patient-0003"
    lost = read_key_file(server.data_dir / "keys" / f"{member}.key")[1]
    recovery, fresh = generate_keypair(), generate_keypair()
    with Client(server.url, keypair=lost) as client:
        made = client.call("identity", "set_recovery", {"recovery_key": recovery.public_b64})
        assert made["result"] == "accepted", made
    with Client(server.url, keypair=recovery) as client:
        done = client.call("identity", "recover", {"public_key": fresh.public_b64})
        assert done["result"] == "accepted", done
    with Client(server.url, keypair=lost) as client, pytest.raises(RemoteError) as refused:
        client.login()
    assert refused.value.code == "KEY_REVOKED"
    with Client(server.url, keypair=fresh) as client:
        token = client.login()
        log = client.get_json(f"/v1/patients/{member}/access-log")
    events = [(e["event"], e.get("by")) for e in log["key_events"]]
    assert events[-2:] == [("recovery_set", None), ("key_recovered", "recovery_key")], events
    assert all(e["time"] for e in log["key_events"])
    with httpx.Client(base_url=server.url, timeout=30) as portal:
        kept = portal.post("/session", json={"token": token}, headers={"origin": server.url})
        assert kept.status_code == 204
        page = portal.get("/me/access").text
    assert "Your key was replaced" in page and "your recovery key" in page
    # nobody else reads it: another patient's token is refused
    with Client(
        server.url, keypair=read_key_file(server.data_dir / "keys" / "patient-0002.key")[1]
    ) as other:
        other.login()
        with pytest.raises(RemoteError) as denied:
            other.get_json(f"/v1/patients/{member}/access-log")
    assert denied.value.code in {"SCOPE", "NOT_AUTHORISED"}  # the token names its own patient
