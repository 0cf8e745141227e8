"""Services decide by the clock and randomness they are given (issue 14): a token issued under a
fixed clock expires exactly at now + ttl, a challenge under an advanced clock is refused, and ids
and codes come from the given source of randomness."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from careledger.callers.tokens import CHALLENGE_TTL_SECONDS, TokenIssuer
from careledger.clock import SYSTEM_CLOCK
from careledger.contracts.base import Signer
from careledger.core.keys import KeyPair, b64url_encode
from careledger.entropy import SYSTEM_RANDOM, token_hex, token_urlsafe
from careledger.errors import Unauthorized
from careledger.smart.grants import SMART_FILE, GrantStore, PendingCode
from tests.support.sources import CountingRandom, FakeClock

NOW = 1_000_000_000  # 2001: long expired by the machine's clock


SIGNER = Signer(
    public_key="ed25519:AAAA", member="dr-a", org="st-mary", roles=frozenset({"clinician"})
)


def issuer(clock: FakeClock, random: CountingRandom | None = None) -> TokenIssuer:
    return TokenIssuer(
        chain="demo",
        node_name="node-a",
        node_key=KeyPair.from_seed(bytes(32)),
        ttl_seconds=900,
        clock=clock,
        random=random or SYSTEM_RANDOM,
    )


def test_a_token_expires_exactly_at_now_plus_ttl() -> None:
    clock = FakeClock(NOW)
    tokens = issuer(clock)
    token, ttl = tokens.issue(SIGNER)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iat"], claims["exp"], ttl) == (NOW, NOW + 900, 900)
    assert tokens.verify(token).expires == NOW + 900  # valid under the given clock
    clock.now = NOW + 899
    assert tokens.verify(token).member == "dr-a"
    clock.now = NOW + 900
    with pytest.raises(Unauthorized) as cached:
        tokens.verify(token)
    assert cached.value.code == "TOKEN_EXPIRED"
    fresh = issuer(clock)  # not remembered as verified: decoded, and judged by the clock
    with pytest.raises(Unauthorized) as decoded:
        fresh.verify(token)
    assert decoded.value.code == "TOKEN_EXPIRED"


def test_a_token_from_the_future_of_the_clock_is_refused() -> None:
    token, _ = issuer(FakeClock(NOW + 3600)).issue(SIGNER)
    with pytest.raises(Unauthorized) as refused:
        issuer(FakeClock(NOW)).verify(token)
    assert refused.value.code == "BAD_TOKEN"


def test_a_challenge_expires_under_an_advanced_clock() -> None:
    clock = FakeClock(NOW)
    tokens = issuer(clock)
    challenge, ttl = tokens.new_challenge("client")
    assert ttl == CHALLENGE_TTL_SECONDS
    clock.now = NOW + CHALLENGE_TTL_SECONDS + 1
    with pytest.raises(Unauthorized) as refused:
        tokens.redeem(challenge, "ed25519:AAAA", "sig")
    assert refused.value.code == "BAD_CHALLENGE"


def test_challenges_and_token_ids_come_from_the_given_random() -> None:
    random = CountingRandom()
    tokens = issuer(FakeClock(NOW), random)
    challenge, _ = tokens.new_challenge()
    assert challenge == b64url_encode(bytes(range(24)))
    token, _ = tokens.issue(SIGNER)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert jti == b64url_encode(bytes(range(24, 36)))


def test_authorization_codes_come_from_the_given_random_and_expire(tmp_path: Path) -> None:
    random = CountingRandom()
    store = GrantStore(tmp_path / SMART_FILE, clock=FakeClock(NOW), random=random)
    try:
        pending = PendingCode(
            client_id="app", redirect_uri="https://app.example/cb", code_challenge="c",
            member="dr-a", public_key="ed25519:AAAA", scope="openid", patient=None,
            aud="https://node.example/fhir", nonce=None, expires=NOW + 60,
        )  # fmt: skip
        code = store.issue_code(pending, NOW)
        assert code == b64url_encode(bytes(range(32)))
        assert store.redeem_code(code, "family", NOW + 60) is None  # expired at its expiry
        fresh = store.issue_code(pending, NOW)
        assert store.redeem_code(fresh, "family", NOW + 59) == pending
    finally:
        store.close()


def test_the_system_sources_and_encodings() -> None:
    assert abs(SYSTEM_CLOCK.now_ms() - SYSTEM_CLOCK.time() * 1000) < 5_000
    random = CountingRandom()
    assert token_hex(random, 2) == "0001"
    assert token_urlsafe(random, 3) == b64url_encode(bytes([2, 3, 4]))
    assert len(SYSTEM_RANDOM.token_bytes(16)) == 16


def test_a_token_not_yet_valid_by_the_given_clock_is_refused() -> None:
    """nbf is judged by the issuer's clock, as exp and iat are (not by the machine's)."""
    clock = FakeClock(NOW)
    tokens = issuer(clock)
    key = KeyPair.from_seed(bytes(32))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    claims = {"iss": "node-a", "aud": "demo", "sub": "dr-a", "iat": NOW, "exp": NOW + 900,
              "nbf": NOW + 60, "key": "ed25519:AAAA", "scope": ""}  # fmt: skip
    early = jwt.encode(claims, private, algorithm="EdDSA")
    with pytest.raises(Unauthorized) as refused:
        tokens.verify(early)
    assert refused.value.code == "BAD_TOKEN"
    clock.now = NOW + 60  # in 2001, by the given clock: valid, though long expired by the machine's
    assert tokens.verify(early).member == "dr-a"
