"""Signed-challenge login: a member proves its key and gets a short-lived bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from careledger.api.deps import IssuerDep, MemberDep, NodeDep
from careledger.errors import CareLedgerError, Unauthorized

router = APIRouter(tags=["auth"])


class ChallengeOut(BaseModel):
    challenge: str
    message: str = Field(description="the exact UTF-8 text to sign with the member's key")
    expires_in: int


class TokenIn(BaseModel):
    public_key: str = Field(max_length=64)
    challenge: str = Field(max_length=64)
    signature: str = Field(max_length=128)
    scope: str | None = Field(default=None, max_length=2048, description="narrower SMART scopes")


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    member: str
    org: str
    roles: list[str]
    scope: str


class WhoAmI(BaseModel):
    member: str
    org: str
    roles: list[str]
    scope: str
    expires: int


@router.post("/v1/auth/challenge", response_model=ChallengeOut)
def challenge(request: Request, issuer: IssuerDep) -> ChallengeOut:
    value, ttl = issuer.new_challenge(request.client.host if request.client else "")
    message = f"careledger-auth:{issuer.chain}:{value}"
    return ChallengeOut(challenge=value, message=message, expires_in=ttl)


@router.post("/v1/auth/token", response_model=TokenOut)
def token(body: TokenIn, node: NodeDep, issuer: IssuerDep) -> TokenOut:
    issuer.redeem(body.challenge, body.public_key, body.signature)
    try:
        signer = node.ledger.signer(body.public_key)
    except CareLedgerError as exc:
        raise Unauthorized(exc.message, code=exc.code) from None
    value, ttl = issuer.issue(signer, scope=body.scope)
    return TokenOut(
        access_token=value,
        expires_in=ttl,
        member=signer.member,
        org=signer.org,
        roles=sorted(signer.roles),
        scope=issuer.verify(value).raw["scope"],
    )


@router.get("/v1/auth/whoami", response_model=WhoAmI)
def whoami(member: MemberDep) -> WhoAmI:
    return WhoAmI(
        member=member.member,
        org=member.org,
        roles=list(member.roles),
        scope=str(member.raw.get("scope", "")),
        expires=member.expires,
    )
