"""Federated reads: a member of organisation B reads records organisation A holds.

B's node asks A's node (its endpoint from the ledger's node registry) with a request signed by
B's node key, naming the reader. A believes the request only if the key is the node member of
an active organisation, the reader is a member of that same organisation, the request is
fresh and not replayed. A then decides exactly as for its own readers: consent on the ledger,
an access event committed before anything is decrypted. B checks every resource against its
ledger anchor (the salted content hash) before showing it, so a custodian cannot answer with
anything but what it anchored. A custodian that does not answer makes ``$everything`` partial,
never failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import httpx
import orjson

from careledger.callers.caller import Caller
from careledger.callers.scopes import Scope, default_scopes, parse_scopes
from careledger.callers.tokens import scope_within
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import member_key, node_key, resolve_node
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import record_key, version_key
from careledger.core.canonical import canonical_bytes
from careledger.core.keys import b64url_decode, b64url_encode, verify_signature
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex
from careledger.errors import (
    CareLedgerError,
    Forbidden,
    NotFound,
    Unauthorized,
    ValidationError,
    VerificationError,
)
from careledger.health.replay_guard import ReplayGuard
from careledger.health.service import HealthRecords, StoredResource
from careledger.vault.crypto import content_hash

MAX_AGE_MS = 120_000
FEDERATION_NONCES_FILE = "federation.sqlite"
NODE_HEADER = "X-CareLedger-Node"
SIGNATURE_HEADER = "X-CareLedger-Signature"
OPERATIONS = frozenset({"read", "everything"})


def scope_text(scope: Scope) -> str:
    """The scope as the custodian's node will parse it again: letters and query kept."""
    return scope.text()


def request_bytes(operation: str, body: Mapping[str, Any]) -> bytes:
    """What a node signs: the operation and the body, canonical (RFC 8785)."""
    return canonical_bytes({"operation": operation, "body": dict(body)})


def stored_json(stored: StoredResource) -> dict[str, Any]:
    return asdict(stored)


class FederationServer:
    """The custodian's side (A)."""

    def __init__(
        self, records: HealthRecords, nonces: ReplayGuard, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._clock = clock  # a request's freshness, and when its nonce was seen
        self.records = records
        self.nonces = nonces

    def _requesting_node(self, node: str, signature: str, operation: str, body: Any) -> Any:
        try:
            signer, public_key = resolve_node(self.records.ledger.state, node)
            sig = b64url_decode(signature)
        except (CareLedgerError, ValueError):
            raise Unauthorized(
                "the request comes from no node of this chain", code="UNKNOWN_PEER"
            ) from None
        if not verify_signature(public_key, request_bytes(operation, body), sig):
            raise Unauthorized("the request signature does not verify", code="BAD_SIGNATURE")
        return signer

    def _fresh(self, body: Mapping[str, Any]) -> None:
        now = self._clock.now_ms()
        sent, nonce = body.get("time"), body.get("nonce")
        if type(sent) is not int or abs(now - sent) > MAX_AGE_MS:
            raise Unauthorized("the request is stale or from the future", code="STALE_REQUEST")
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
            raise ValidationError("the request needs a nonce", code="BAD_REQUEST")
        self.nonces.first_use(nonce, now)

    def _reader(self, body: Mapping[str, Any], node_org: str) -> Caller:
        ledger = self.records.ledger
        reader = body.get("reader")
        member = ledger.state(IDENTITY, member_key(reader)) if isinstance(reader, str) else None
        if member is None:
            raise Forbidden("no such reader", code="UNKNOWN_MEMBER")
        signer = ledger.signer(member["key"])
        if signer.org != node_org:
            raise Forbidden("a node speaks only for its own organisation", code="NOT_AUTHORISED")
        allowed = parse_scopes(default_scopes(signer.roles))
        wanted = body.get("scopes")
        if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
            raise ValidationError("scopes must be a list of SMART scopes", code="BAD_REQUEST")
        scopes = tuple(
            s for s in parse_scopes(" ".join(wanted)) if any(scope_within(s, a) for a in allowed)
        )
        return Caller(signer.member, signer.org, signer.roles, scopes)

    def handle(self, operation: str, node: str, signature: str, body: Any) -> dict[str, Any]:
        if operation not in OPERATIONS or not isinstance(body, dict):
            raise ValidationError("unknown federation request", code="BAD_REQUEST")
        peer = self._requesting_node(node, signature, operation, body)
        ledger = self.records.ledger
        if body.get("custodian") != self.records.org or body.get("chain") != ledger.chain:
            # the signature covers the audience: a request cannot be replayed to another node
            raise Unauthorized(
                "the request is addressed to another custodian", code="WRONG_AUDIENCE"
            )
        self._fresh(body)
        caller = self._reader(body, peer.org)
        purpose = str(body.get("purpose", "TREAT"))
        if operation == "read":
            stored = self.records.read(
                caller,
                str(body.get("type")),
                str(body.get("record")),
                version=body.get("version") if type(body.get("version")) is int else None,
                purpose=purpose,
                local_only=True,
            )
            return {"resources": [stored_json(stored)]}
        types = body.get("types")
        found = self.records.everything(
            caller,
            str(body.get("patient")),
            types=set(types) if isinstance(types, list) else None,
            purpose=purpose,
        )
        return {"resources": [stored_json(s) for s in found]}


class FederationClient:
    """The reader's side (B)."""

    def __init__(
        self,
        records: HealthRecords,
        *,
        timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self._clock = clock  # a request's signed time
        self._random = random  # its nonce
        self.records = records
        self.timeout = timeout

    def endpoint(self, org: str) -> str:
        entry = self.records.ledger.state(IDENTITY, node_key(org))
        if entry is None or entry.get("status") != "active":
            raise NotFound(f"{org} has no registered node to ask", code="REMOTE_UNAVAILABLE")
        return str(entry["endpoint"]).rstrip("/")

    def _ask(self, org: str, operation: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        ledger = self.records.ledger
        body = {
            **body,
            "custodian": org,
            "chain": ledger.chain,
            "time": self._clock.now_ms(),
            "nonce": token_hex(self._random, 16),
        }
        signature = b64url_encode(ledger.node_key.sign(request_bytes(operation, body)))
        url = f"{self.endpoint(org)}/v1/federation/{operation}"
        try:
            response = httpx.post(
                url,
                content=orjson.dumps(body),
                headers={
                    "content-type": "application/json",
                    NODE_HEADER: ledger.node_name,
                    SIGNATURE_HEADER: signature,
                },
                timeout=self.timeout,
            )
        except httpx.HTTPError:
            raise NotFound(f"{org}'s node did not answer", code="REMOTE_UNAVAILABLE") from None
        if response.status_code != 200:
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            code = str(problem.get("code") or f"REMOTE_{response.status_code}")
            detail = str(problem.get("detail") or "the custodian refused")
            error = CareLedgerError(f"{org}: {detail}", code=code)
            error.http_status = response.status_code if response.status_code < 500 else 502
            raise error
        resources = response.json().get("resources")
        if not isinstance(resources, list):
            raise VerificationError(f"{org} answered nonsense", code="REMOTE_TAMPERED")
        return resources

    def _verified(self, org: str, raw: Mapping[str, Any]) -> StoredResource:
        """A resource from a custodian, accepted only if it hashes to its ledger anchor."""
        try:
            stored = StoredResource(**raw)
            meta = self.records.ledger.state(RECORDS, record_key(stored.record_id))
            anchor = self.records.ledger.state(
                RECORDS, version_key(stored.record_id, stored.version)
            )
            salt = b64url_decode(stored.salt)
            ok = (
                meta is not None
                and anchor is not None
                and meta["custodian"] == org
                and meta["type"] == stored.resource_type
                and meta["patient"] == stored.patient
                and anchor["hash"] == content_hash(canonical_bytes(stored.resource), salt)
            )
        except (TypeError, ValueError, KeyError, CareLedgerError):
            ok = False
        if not ok:
            raise VerificationError(
                f"a record from {org} does not match its ledger anchor", code="REMOTE_TAMPERED"
            )
        return stored

    def read(
        self,
        caller: Caller,
        custodian: str,
        resource_type: str,
        record_id: str,
        *,
        version: int | None,
        purpose: str,
    ) -> StoredResource:
        body: dict[str, Any] = {
            "reader": caller.member,
            "scopes": [scope_text(s) for s in caller.scopes],
            "type": resource_type,
            "record": record_id,
            "purpose": purpose,
        }
        if version is not None:
            body["version"] = version
        answers = self._ask(custodian, "read", body)
        if len(answers) != 1:
            raise VerificationError(
                f"{custodian} answered {len(answers)} records", code="REMOTE_TAMPERED"
            )
        stored = self._verified(custodian, answers[0])
        latest = self.records.record_meta(record_id, resource_type)["version"]
        if stored.record_id != record_id or stored.version != (version or latest):
            raise VerificationError(
                f"{custodian} answered with another record or version", code="REMOTE_TAMPERED"
            )
        return stored

    def everything(
        self,
        caller: Caller,
        patient: str,
        custodians: Sequence[str],
        *,
        types: set[str] | None,
        purpose: str,
    ) -> tuple[list[StoredResource], list[tuple[str, str]]]:
        """Every custodian's share; (org, why) for each one that could not answer."""
        found: list[StoredResource] = []
        missing: list[tuple[str, str]] = []
        body: dict[str, Any] = {
            "reader": caller.member,
            "scopes": [scope_text(s) for s in caller.scopes],
            "patient": patient,
            "purpose": purpose,
        }
        if types is not None:
            body["types"] = sorted(types)
        for org in custodians:
            try:
                answers = [self._verified(org, r) for r in self._ask(org, "everything", body)]
                for stored in answers:
                    if stored.patient != patient or (
                        types is not None and stored.resource_type not in types
                    ):
                        raise VerificationError(
                            f"{org} answered records that were not asked for",
                            code="REMOTE_TAMPERED",
                        )
                    self.records.record_meta(stored.record_id)  # not shredded since
                found.extend(answers)
            except CareLedgerError as exc:
                missing.append((org, exc.code))
        return found, missing
