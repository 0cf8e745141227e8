"""Token issuance: signed challenges, scopes that can narrow but never widen, expiry."""

from __future__ import annotations

import pytest

from careledger.callers.tokens import TokenIssuer, challenge_message
from careledger.contracts.base import Signer
from careledger.core.keys import KeyPair, b64url_encode
from careledger.errors import Unauthorized

NODE = KeyPair.from_seed(bytes(32))
MEMBER = KeyPair.from_seed(bytes([1]) * 32)


def issuer(ttl: int = 900) -> TokenIssuer:
    return TokenIssuer(chain="c.test", node_name="n1", node_key=NODE, ttl_seconds=ttl)


def signer(*roles: str) -> Signer:
    return Signer(MEMBER.public_b64, "m1", "org1", frozenset(roles))


def test_default_and_narrowed_scopes() -> None:
    tokens = issuer()
    token, _ = tokens.issue(signer("clinician"))
    assert tokens.verify(token).raw["scope"] == "user/*.read user/*.write"
    narrow, _ = tokens.issue(signer("clinician"), scope="user/Observation.read")
    claims = tokens.verify(narrow)
    assert [(s.resource_type, s.read, s.write) for s in claims.scopes] == [
        ("Observation", True, False)
    ]


@pytest.mark.parametrize(
    ("roles", "scope"),
    [
        (("patient",), "user/*.read"),
        (("pharmacist",), "user/*.write"),
        (("patient",), "system/*.read"),
    ],
)
def test_scopes_never_widen(roles: tuple[str, ...], scope: str) -> None:
    with pytest.raises(Unauthorized) as info:
        issuer().issue(signer(*roles), scope=scope)
    assert info.value.code == "BAD_SCOPE"


def test_expired_and_foreign_tokens() -> None:
    token, _ = issuer(ttl=10).issue(signer("patient"), now=1_000)
    with pytest.raises(Unauthorized) as info:
        issuer().verify(token)
    assert info.value.code == "TOKEN_EXPIRED"
    other = TokenIssuer(chain="c.test", node_name="n1", node_key=MEMBER, ttl_seconds=900)
    forged, _ = other.issue(signer("patient"))
    with pytest.raises(Unauthorized) as info:
        issuer().verify(forged)
    assert info.value.code == "BAD_TOKEN"


def test_challenge_is_single_use() -> None:
    tokens = issuer()
    challenge, _ = tokens.new_challenge()
    signature = b64url_encode(MEMBER.sign(challenge_message("c.test", challenge)))
    tokens.redeem(challenge, MEMBER.public_b64, signature)
    with pytest.raises(Unauthorized):
        tokens.redeem(challenge, MEMBER.public_b64, signature)
    fresh, _ = tokens.new_challenge()
    wrong = b64url_encode(MEMBER.sign(challenge_message("other.chain", fresh)))
    with pytest.raises(Unauthorized):
        tokens.redeem(fresh, MEMBER.public_b64, wrong)


def redeem(tokens: TokenIssuer, challenge: str) -> None:
    signature = b64url_encode(MEMBER.sign(challenge_message("c.test", challenge)))
    tokens.redeem(challenge, MEMBER.public_b64, signature)


def test_a_flood_of_challenges_from_one_address_locks_nobody_else_out() -> None:
    tokens = issuer()
    alice, _ = tokens.new_challenge("10.0.0.7")
    for _ in range(12_000):
        tokens.new_challenge("10.6.6.6")
    redeem(tokens, alice)  # still open: the flood only displaced the flooder's own challenges
    fresh, _ = tokens.new_challenge("10.0.0.8")
    redeem(tokens, fresh)


def test_one_address_holds_only_a_few_open_challenges() -> None:
    tokens = issuer()
    first, _ = tokens.new_challenge("10.6.6.6")
    for _ in range(16):
        tokens.new_challenge("10.6.6.6")
    with pytest.raises(Unauthorized):
        redeem(tokens, first)


def test_a_revoked_token_is_refused_at_once() -> None:
    tokens = issuer()
    token, _ = tokens.issue(signer("clinician"))
    other, _ = tokens.issue(signer("clinician"))
    tokens.revoke(token)
    with pytest.raises(Unauthorized) as refused:
        tokens.verify(token)
    assert refused.value.code == "TOKEN_REVOKED"
    assert tokens.verify(other).member == "m1"


def test_a_token_remembered_as_verified_still_expires_and_is_still_revoked() -> None:
    """Verified tokens are remembered (the signature is checked once); expiry and revocation
    are checked on every use all the same."""

    class Clock:
        now = 1_800_000_000.0

        def time(self) -> float:
            return self.now

        def now_ms(self) -> int:
            return int(self.now * 1000)

    clock = Clock()
    tokens = TokenIssuer(chain="c.test", node_name="n1", node_key=NODE, ttl_seconds=60,
                         clock=clock)  # fmt: skip
    token, _ = tokens.issue(signer("clinician"))
    claims = tokens.verify(token)
    assert tokens.verify(token) is claims  # remembered, not decoded again
    clock.now = float(claims.expires)
    with pytest.raises(Unauthorized) as expired:
        tokens.verify(token)
    assert expired.value.code == "TOKEN_EXPIRED"
    clock.now = float(claims.expires) - 30
    grant_token, _ = tokens.issue(signer("clinician"), grant="g-1")
    tokens.verify(grant_token)
    tokens.revoke_grant("g-1", until=claims.expires)
    with pytest.raises(Unauthorized) as revoked:
        tokens.verify(grant_token)
    assert revoked.value.code == "TOKEN_REVOKED"
    tokens.revoke(token)
    with pytest.raises(Unauthorized) as signed_out:
        tokens.verify(token)
    assert signed_out.value.code == "TOKEN_REVOKED"
