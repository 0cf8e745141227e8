"""SMART Health Cards this node issues, as its organisation, for a patient's immunizations or
lab results: a signed, verifiable copy the patient carries (QR or file) and any SHC verifier
accepts.

The issuer is ``{origin}/shc/{org}``: its ES256 key lives in the node's data directory (made on
first use) and its public JWKS at ``{iss}/.well-known/jwks.json``. A card's issuing is an access
of the patient's own records (the ``self`` basis) and ``links.issue_card`` on the ledger, with
its revocation id; revoking a card (the patient, on the ledger) puts its ``rid`` in the issuer's
revocation list, served at ``{iss}/.well-known/crl/{kid}.json`` straight from ledger state, with
the key's ``crlVersion`` moving on so verifiers fetch it again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from careledger.callers.caller import Caller
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.links import NAMESPACE as LINKS
from careledger.contracts.links import card_index_key, card_key, crl_counter_key
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex, token_urlsafe
from careledger.errors import Forbidden, NotFound, Rejected, ValidationError
from careledger.health.service import HealthRecords, StoredResource
from careledger.health_links.card import (
    card_payload,
    crl,
    file_body,
    issuer_jwk,
    minimise_bundle,
    revocation_id,
    sign_card,
)
from careledger.health_links.qr import MAX_SHC_JWS_CHARS, qr_svg, shc_numeric
from careledger.patient_signing import sign_as_patient

ISSUER_FILE = "shc-issuer.json"
KINDS = {
    "immunizations": ("Immunization", "https://smarthealth.cards#immunization"),
    "lab-results": ("Observation", "https://smarthealth.cards#laboratory"),
}
MAX_TRIES = 40  # resources added one at a time, newest first, while the card fits one QR


def _is_lab(resource: dict[str, Any]) -> bool:
    return any(
        coding.get("code") == "laboratory"
        for category in resource.get("category", [])
        for coding in category.get("coding", [])
    )


def _self_contained(resource: dict[str, Any], patient: str) -> dict[str, Any]:
    """The resource without references to anything the card does not hold (an encounter, a
    performer): a card's references are to its own entries (``resource:N``), and what it does
    not carry it should not point at."""
    def keep(value: Any) -> bool:
        return not (isinstance(value, dict) and "reference" in value
                    and value["reference"] != f"Patient/{patient}")  # fmt: skip

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if keep(v) and clean(v) != []}
        if isinstance(value, list):
            return [clean(v) for v in value if keep(v) and clean(v) not in ([], {})]
        return value

    out: dict[str, Any] = clean(resource)
    return out


def _date(resource: dict[str, Any]) -> str:
    for field in ("occurrenceDateTime", "effectiveDateTime", "issued", "recorded"):
        if resource.get(field):
            return str(resource[field])
    return ""


class HealthCards:
    def __init__(
        self,
        records: HealthRecords,
        data_dir: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self._clock = clock  # cards' nbf
        self._random = random  # card ids, the issuer's revocation secret
        self.records = records
        self.ledger = records.ledger
        self._path = data_dir / ISSUER_FILE
        self._lock = threading.Lock()
        self._issuer: tuple[dict[str, Any], str] | None = None

    def _key(self) -> tuple[dict[str, Any], str]:
        """(private JWK, revocation secret), made once and kept 0600 beside the node's key."""
        with self._lock:
            if self._issuer is None:
                if not self._path.exists():
                    private = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
                    doc = {"jwk": private.as_dict(private=True),
                           "rid_secret": token_urlsafe(self._random, 32)}  # fmt: skip
                    fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(orjson.dumps(doc))
                doc = orjson.loads(self._path.read_bytes())
                self._issuer = (dict(doc["jwk"]), str(doc["rid_secret"]))
            return self._issuer

    def _public(self) -> dict[str, Any]:
        private = ECKey.import_key(self._key()[0]).raw_value
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValidationError("the issuer key file holds no private P-256 key",
                                  code="BAD_SHC_KEY")  # fmt: skip
        return issuer_jwk(private)

    def issuer(self, origin: str) -> str:
        return f"{origin}/shc/{self.records.org}"

    def jwks(self, org: str) -> dict[str, Any]:
        """The issuer's public keys; ``crlVersion`` once a card of the key was revoked."""
        if org != self.records.org:
            raise NotFound("this node issues no cards for that organisation", code="UNKNOWN_ISSUER")
        public = self._public()
        counter = int(self.ledger.state(LINKS, crl_counter_key(org, public["kid"])) or 0)
        if counter:
            public["crlVersion"] = counter
        return {"keys": [public]}

    def revocations(self, org: str, kid: str) -> dict[str, Any]:
        if org != self.records.org or kid != self._public()["kid"]:
            raise NotFound("no revocation list for that key", code="UNKNOWN_ISSUER")
        counter = int(self.ledger.state(LINKS, crl_counter_key(org, kid)) or 0)
        if not counter:
            raise NotFound("no card of this key was revoked", code="UNKNOWN_ISSUER")
        prefix = f"crl/{org}/{kid}/"
        rids = [k[len(prefix):] for k in self.ledger.store.state_keys(LINKS, prefix, 1_000_000)]
        return crl(kid, counter, sorted(rids))

    def issue(self, caller: Caller, patient: str, kind: str, origin: str) -> dict[str, Any]:
        """A card of the patient's immunizations or lab results: the newest that fit one QR."""
        if not caller.is_patient(patient) or caller.is_app:
            raise Forbidden("a patient asks for their own card", code="NOT_AUTHORISED")
        if kind not in KINDS:
            raise ValidationError(f"kind: one of {sorted(KINDS)}", code="BAD_CARD")
        resource_type, vc_type = KINDS[kind]
        chosen = self._candidates(patient, resource_type)
        if not chosen:
            raise NotFound(f"no {kind.replace('-', ' ')} held here to put on a card",
                           code="NOTHING_TO_CARD")  # fmt: skip
        subject = self._subject(patient)
        jwk, secret = self._key()
        kid = self._public()["kid"]
        card_id = token_hex(self._random, 16)
        rid = revocation_id(secret, kid, card_id)
        iss = self.issuer(origin)
        nbf = int(self._clock.time())
        best: tuple[str, list[StoredResource]] | None = None
        for count in range(1, min(len(chosen), MAX_TRIES) + 1):
            included = chosen[:count]
            bundle = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"fullUrl": f"Patient/{patient}", "resource": subject}]
                      + [{"fullUrl": f"{s.resource_type}/{s.record_id}",
                          "resource": _self_contained(s.resource, patient)}
                         for s in included]}  # fmt: skip
            payload = card_payload(iss, nbf, minimise_bundle(bundle), [vc_type], rid)
            jws = sign_card(payload, jwk)
            if len(jws) > MAX_SHC_JWS_CHARS:
                break
            best = (jws, included)
        if best is None:
            raise ValidationError("even one record does not fit a card", code="SHC_TOO_LARGE")
        jws, included = best
        records = [s.record_id for s in included] + [patient]
        access = self.records.access_args(
            caller, patient, records, {resource_type, "Patient"}, "read", "PATRQT",
            interaction="read",
        )  # fmt: skip
        issue = {"card": card_id, "patient": patient, "kid": kid, "rid": rid,
                 "types": [resource_type]}  # fmt: skip
        receipts = self.records.node.execute([("audit", "access", access),
                                              (LINKS, "issue_card", issue)])  # fmt: skip
        refused = [r for r in receipts if r["result"] != "accepted"]
        if refused:
            raise Rejected(str(refused[0]["code"]), "the ledger refused the card")
        numeric = shc_numeric(jws)
        return {
            "id": card_id,
            "kind": kind,
            "issuer": iss,
            "jws": jws,
            "file": file_body([jws]),
            "shc": numeric,
            "qr_svg": qr_svg(numeric, numeric_shc=True),
            "included": len(included),
            "held": len(chosen),
            "receipt": receipts[1],
        }

    def _candidates(self, patient: str, resource_type: str) -> list[StoredResource]:
        """The patient's live records of the card's kind held here, newest first."""
        out = []
        height = self.ledger.head.height
        for record_id, _ in self.records.patient_records(patient, {resource_type}):
            current = self.records.current_at(record_id, height)
            if current is None:
                continue
            stored = self.records.open_version(record_id, current[1])
            if resource_type != "Observation" or _is_lab(stored.resource):
                out.append(stored)
        return sorted(out, key=lambda s: _date(s.resource), reverse=True)

    def _subject(self, patient: str) -> dict[str, Any]:
        """The card's Patient: name and birth date only (what a verifier shows to match a
        person), not identifiers or addresses."""
        current = self.records.current_at(patient, self.ledger.head.height)
        resource = self.records.open_version(patient, current[1]).resource if current else {}
        subject: dict[str, Any] = {"resourceType": "Patient"}
        if resource.get("name"):
            subject["name"] = [
                {k: v for k, v in n.items() if k in ("family", "given")} for n in resource["name"]
            ]
        if resource.get("birthDate"):
            subject["birthDate"] = resource["birthDate"]
        return subject

    def cards(self, caller: Caller, patient: str) -> list[dict[str, Any]]:
        if not caller.is_patient(patient) or caller.is_app:
            raise Forbidden("a patient sees their own cards", code="NOT_AUTHORISED")
        prefix = card_index_key(patient, "")
        out = []
        for key in self.ledger.store.state_keys(LINKS, prefix, 10_000):
            card = self.ledger.state(LINKS, card_key(key[len(prefix):]))
            if card is not None:
                out.append({k: card[k] for k in ("id", "issuer", "types", "status", "time")})
        return sorted(out, key=lambda c: c["time"], reverse=True)

    def revoke(
        self, caller: Caller, patient: str, card_id: str, envelope: object | None = None
    ) -> dict[str, Any]:
        card = self.ledger.state(LINKS, card_key(card_id)) if len(card_id) == 32 else None
        if card is None or card["patient"] != patient:
            raise NotFound("no such card", code="UNKNOWN_CARD")
        return sign_as_patient(self.records, caller, LINKS, "revoke_card", {"card": card_id},
                               envelope)  # fmt: skip
