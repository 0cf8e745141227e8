"""Python client: build and sign transactions, submit them, and verify what the node returns.

Nothing the server says is trusted: receipts are re-hashed, inclusion and consistency proofs are
re-computed and checkpoints are checked against note verifier keys the caller supplies.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from careledger.core import merkle
from careledger.core.canonical import canonical_bytes, sha256_hex
from careledger.core.checkpoint import Checkpoint, parse_checkpoint, parse_vkey, verify_note
from careledger.core.keys import KeyPair, b64url_decode, b64url_encode
from careledger.core.tx import make_body, sign_body
from careledger.errors import (
    CareLedgerError,
    ValidationError,
    VerificationError,
)
from careledger.nonces import NonceSource

__all__ = [
    "Client",
    "KeyPair",
    "RemoteError",
    "VerifiedReceipt",
    "verify_checkpoint",
    "verify_consistency",
    "verify_tx_proof",
]


def _link_flags(request: Mapping[str, Any]) -> str:
    """The SMART Health Link flags a make_link request means (L, P, U in that order)."""
    return ("L" if request.get("long_term") else "") + ("P" if request.get("passcode") else "") + (
        "U" if request.get("direct") else ""
    )


class RemoteError(CareLedgerError):
    """The node answered with an error; ``code`` is its stable problem code."""

    def __init__(self, status: int, code: str, detail: str, body: Mapping[str, Any]) -> None:
        super().__init__(detail, code=code)
        self.http_status = status
        self.body = dict(body)


@dataclass(frozen=True)
class VerifiedReceipt:
    receipt: dict[str, Any]
    leaf_index: int
    checkpoint: Checkpoint
    signers: tuple[str, ...]


def verify_checkpoint(
    note: str, verifier_keys: Iterable[str], *, min_signatures: int = 1
) -> tuple[Checkpoint, tuple[str, ...]]:
    """Parse a checkpoint note signed by at least ``min_signatures`` of the given vkeys."""
    verifiers = [parse_vkey(k) for k in verifier_keys]
    body, signers = verify_note(note, verifiers, min_signatures=min_signatures)
    return parse_checkpoint(body), signers


def verify_tx_proof(
    answer: Mapping[str, Any], verifier_keys: Iterable[str], *, min_signatures: int = 1
) -> VerifiedReceipt:
    """Check a ``GET /v1/tx/{id}`` answer: receipt → leaf → root → signed checkpoint."""
    try:
        receipt = dict(answer["receipt"])
        leaf_index = int(answer["leaf_index"])
        proof = answer["proof"]
        size = int(proof["tree_size"])
        path = [bytes.fromhex(p) for p in proof["path"]]
        note = str(answer["checkpoint"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"malformed proof answer: {exc}") from None
    checkpoint, signers = verify_checkpoint(note, verifier_keys, min_signatures=min_signatures)
    if checkpoint.size != size:
        raise VerificationError("the proof and the checkpoint are for different tree sizes")
    if receipt.get("leaf_index") != leaf_index:
        raise VerificationError("the receipt names a different leaf index")
    leaf = merkle.leaf_hash(canonical_bytes(receipt))
    merkle.verify_inclusion(leaf, leaf_index, size, path, checkpoint.root)
    return VerifiedReceipt(receipt, leaf_index, checkpoint, signers)


def verify_consistency(answer: Mapping[str, Any], first: Checkpoint, second: Checkpoint) -> None:
    """Check a consistency proof between two checkpoints the caller already verified."""
    try:
        path = [bytes.fromhex(p) for p in answer["path"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"malformed consistency answer: {exc}") from None
    if first.origin != second.origin:
        raise VerificationError("the checkpoints are of different logs")
    merkle.verify_consistency(first.size, second.size, first.root, second.root, path)


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        keypair: KeyPair | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport, headers=headers
        )
        self.keypair = keypair
        self._chain: str | None = None
        self._nonces = NonceSource()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            where = str(self._http.base_url).rstrip("/")
            raise CareLedgerError(
                f"cannot reach the node at {where} (give --url or set CARELEDGER_URL): {exc}",
                code="NODE_UNREACHABLE",
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            code = str(
                body.get("code")
                or response.headers.get("X-CareLedger-Code")
                or f"HTTP_{response.status_code}"
            )
            issues = body.get("issue") or [{}]  # an OperationOutcome from /fhir
            detail = str(
                body.get("detail") or issues[0].get("diagnostics") or response.reason_phrase
            )
            raise RemoteError(response.status_code, code, detail, body)
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", path, params=clean).json()

    # -- reads ---------------------------------------------------------------------------

    @property
    def chain(self) -> str:
        if self._chain is None:
            self._chain = str(self.get_json("/healthz")["chain"])
        return self._chain

    def head(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/v1/head")
        return result

    def checkpoint(self, tree_size: int | None = None) -> str:
        params = {"tree_size": tree_size} if tree_size else {}
        return self._request("GET", "/v1/checkpoint", params=params).text

    def verifier_keys(self) -> list[str]:
        text = self._request("GET", "/v1/checkpoint/keys").text
        return [line for line in text.splitlines() if line.strip()]

    def tx(
        self, tx_id: str, tree_size: int | None = None, *, signatures: int | None = None
    ) -> dict[str, Any]:
        """The receipt and inclusion proof; ``signatures=K``: against a K-cosigned checkpoint."""
        result: dict[str, Any] = self.get_json(
            f"/v1/tx/{tx_id}", tree_size=tree_size, signatures=signatures
        )
        return result

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/v1/proof/consistency", first=first, second=second)
        return result

    def state(self, contract: str, key: str) -> Any:
        return self.get_json(f"/v1/state/{contract}/{key}")["value"]

    def members(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/v1/members")
        return result

    # -- writes --------------------------------------------------------------------------

    def build(
        self,
        contract: str,
        method: str,
        args: Mapping[str, Any],
        *,
        nonce: int | None = None,
        keypair: KeyPair | None = None,
    ) -> dict[str, Any]:
        key = keypair or self.keypair
        if key is None:
            raise ValidationError("a key pair is needed to sign", code="NO_KEY")
        body = make_body(
            chain=self.chain,
            contract=contract,
            method=method,
            args=args,
            signer=key.public_b64,
            nonce=nonce if nonce is not None else self._nonces.next(),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        return sign_body(body, key)

    def submit(
        self, envelopes: dict[str, Any] | Sequence[dict[str, Any]], *, wait: bool = True
    ) -> Any:
        """One envelope → its receipt (wait) or id; a list → per-envelope results."""
        response = self._request(
            "POST",
            "/v1/tx",
            params={"wait": "true" if wait else "false"},
            content=_dumps(envelopes),
            headers={"content-type": "application/json"},
        )
        body = response.json()
        if isinstance(envelopes, dict):
            return body["receipt"] if wait else body["tx_id"]
        return body["results"] if wait else body["tx_ids"]

    def call(
        self, contract: str, method: str, args: Mapping[str, Any], *, wait: bool = True
    ) -> Any:
        return self.submit(self.build(contract, method, args), wait=wait)

    def check(self, contract: str, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """A dry run of a call on the node's head state: ``{"result": "would_accept"}`` or
        ``{"result": "would_reject", "code", "message"}``; nothing is submitted."""
        response = self._request(
            "POST",
            "/v1/tx/check",
            content=_dumps(self.build(contract, method, args)),
            headers={"content-type": "application/json"},
        )
        answer: dict[str, Any] = response.json()
        return answer

    # -- verified reads ------------------------------------------------------------------

    def verified_receipt(
        self, tx_id: str, verifier_keys: Iterable[str], *, min_signatures: int = 1
    ) -> VerifiedReceipt:
        answer = self.tx(tx_id, signatures=min_signatures if min_signatures > 1 else None)
        verified = verify_tx_proof(answer, verifier_keys, min_signatures=min_signatures)
        if verified.receipt.get("tx_id") != tx_id:
            raise VerificationError("the node returned a receipt for another transaction")
        return verified

    def verified_consistency(
        self, old_note: str, new_note: str, verifier_keys: Sequence[str]
    ) -> None:
        first, _ = verify_checkpoint(old_note, verifier_keys)
        second, _ = verify_checkpoint(new_note, verifier_keys)
        if first.size == second.size:
            if first.root != second.root:
                raise VerificationError("two checkpoints of one size with different roots")
            return
        verify_consistency(self.consistency(first.size, second.size), first, second)

    def verify_resource(
        self,
        resource: Mapping[str, Any],
        headers: Mapping[str, str],
        verifier_keys: Iterable[str],
        *,
        min_signatures: int = 1,
    ) -> VerifiedReceipt:
        """Check a FHIR read against the ledger: its salted hash is what a committed, signed
        anchor (proved included under a checkpoint you trust) recorded for that version."""
        try:
            tx_id = headers["X-CareLedger-Anchor-Tx"]
            salt = b64url_decode(headers["X-CareLedger-Salt"])
            record_id = str(resource["id"])
            version = int(resource["meta"]["versionId"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise VerificationError(f"the read carries no usable anchor: {exc}") from None
        verified = self.verified_receipt(tx_id, verifier_keys, min_signatures=min_signatures)
        args = self._anchoring_args(tx_id, verified)
        anchors = args.get("anchors") or [args]
        digest = hmac.new(salt, canonical_bytes(dict(resource)), hashlib.sha256).hexdigest()
        if not any(
            a.get("record") == record_id and a.get("version") == version and a.get("hash") == digest
            for a in anchors
        ):
            raise VerificationError("the resource does not hash to its ledger anchor")
        return verified

    def _anchoring_args(self, tx_id: str, verified: VerifiedReceipt) -> dict[str, Any]:
        """The arguments of a committed transaction, checked against its proven receipt."""
        if verified.receipt["result"] != "accepted":
            raise VerificationError("the anchoring transaction was rejected")
        block = self.get_json(f"/v1/blocks/{verified.receipt['height']}")
        envelope = next(
            (t.get("envelope") for t in block["transactions"] if t["tx_id"] == tx_id), None
        )
        if envelope is None:
            raise VerificationError(
                "the anchoring envelope is not readable with this client: log in as the patient "
                "it names, or as a node, admin or auditor (ADR 0012)"
            )
        if (
            envelope is None
            or sha256_hex(canonical_bytes(envelope)) != verified.receipt["envelope_hash"]
        ):
            raise VerificationError("the anchoring envelope does not match its receipt")
        body = envelope["body"]
        args: dict[str, Any] = body["args"]
        if body["contract"] == "monitoring" and body["method"] == "on_behalf":
            args = args["args"]
        return args

    # -- remote monitoring -------------------------------------------------------------------

    def send_readings(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """POST a signed batch (see careledger.monitoring.device.sign_batch); its ack."""
        device = envelope["batch"]["device"]
        result: dict[str, Any] = self.post_json(f"/v1/devices/{device}/readings", envelope)
        return result

    def reading(self, device: str, window: int, index: int) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(
            f"/v1/devices/{device}/windows/{window}/readings/{index}"
        )
        return result

    def verify_reading(
        self, answer: Mapping[str, Any], verifier_keys: Iterable[str], *, min_signatures: int = 1
    ) -> VerifiedReceipt:
        """Check a reading end to end: reading -> window root (inclusion path) -> the
        ``monitoring.anchor_window`` transaction carrying that root -> a signed checkpoint."""
        from careledger.monitoring.device import check_reading_proof

        root = check_reading_proof(answer)
        tx_id = answer["anchor"]["tx_id"]
        verified = self.verified_receipt(tx_id, verifier_keys, min_signatures=min_signatures)
        args = self._anchoring_args(tx_id, verified)
        window = answer["window"]
        if (
            args.get("device") != window["device"]
            or args.get("window") != window["window"]
            or args.get("root") != root.hex()
            or args.get("count") != window["count"]
        ):
            raise VerificationError("the window root is not what the ledger anchored")
        return verified

    # -- FHIR ----------------------------------------------------------------------------

    def fhir_create(self, resource: Mapping[str, Any]) -> str:
        """POST a resource to /fhir (needs a token: call :meth:`login` first); its new id."""
        response = self._request(
            "POST",
            f"/fhir/{resource.get('resourceType')}",
            content=_dumps(resource),
            headers={"content-type": "application/fhir+json"},
        )
        return str(response.json()["id"])

    def create(
        self, resource: dict[str, Any], if_none_exist: str | None = None
    ) -> tuple[str, bool]:
        """The importer's Sink interface: a conditional create when ``if_none_exist`` is given;
        (the id, whether it was created)."""
        headers = {"content-type": "application/fhir+json"}
        if if_none_exist is not None:
            headers["if-none-exist"] = if_none_exist
        response = self._request(
            "POST",
            f"/fhir/{resource.get('resourceType')}",
            content=_dumps(resource),
            headers=headers,
        )
        return str(response.json()["id"]), response.status_code == 201

    # -- auth ----------------------------------------------------------------------------

    # -- drug supply chain -------------------------------------------------------------------

    def epcis_capture(self, document: bytes | Mapping[str, Any]) -> dict[str, Any]:
        """Capture an EPCIS 2.0 document; the capture's status, with per-event errors."""
        body = document if isinstance(document, bytes) else orjson.dumps(document)
        response = self._request(
            "POST", "/epcis/capture", content=body, headers={"content-type": "application/json"}
        )
        result: dict[str, Any] = response.json()
        return result

    def verify_product(
        self,
        link: str,
        *,
        corr_uuid: str | None = None,
        requestor_gln: str | None = None,
        explain: bool = False,
    ) -> dict[str, Any]:
        """A DSCSA verification (LMS response) of the pack a GS1 Digital Link names; with
        ``explain``, also its ``verdict`` (dispense or not, why, what to do)."""
        result: dict[str, Any] = self.get_json(
            "/v1/supply/verify",
            link=link,
            corrUUID=corr_uuid,
            reqGLN=requestor_gln,
            explain="true" if explain else None,
        )
        return result

    # -- clinical trials ---------------------------------------------------------------------

    def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        response = self._request(
            "POST", path, content=_dumps(body), headers={"content-type": "application/json"}
        )
        return response.json()

    def trial_register(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Register a study (``registration``, ``ctgov`` or ``researchStudy``; as the sponsor)."""
        result: dict[str, Any] = self.post_json("/v1/trials", body)
        return result

    def feasibility(
        self,
        body: Mapping[str, Any],
        *,
        wait: float = 0.0,
        poll: float = 0.2,
        progress: Callable[[dict[str, Any], float], None] | None = None,
    ) -> dict[str, Any]:
        """Ask the sites for eligible counts; with ``wait``, poll until every site answered
        or ``wait`` seconds passed (the answer then lists the sites still pending).
        ``progress(answer so far, seconds left)`` is called at each poll."""
        query = self.post_json("/v1/recruitment/queries", body)["query"]
        deadline = time.monotonic() + wait
        while True:
            answer: dict[str, Any] = self.get_json(f"/v1/recruitment/queries/{query}")
            left = deadline - time.monotonic()
            if not answer["pending"] or left <= 0:
                return answer
            if progress is not None:
                progress(answer, left)
            time.sleep(poll)

    def privacy_budgets(self) -> list[dict[str, Any]]:
        """Each sponsor's privacy budget at the caller's site (its admin or auditor)."""
        items: list[dict[str, Any]] = self.get_json("/v1/recruitment/budget")["items"]
        return items

    def set_privacy_budget(self, sponsor: str, epsilon: float) -> dict[str, Any]:
        response = self._request(
            "PUT",
            f"/v1/recruitment/budget/{sponsor}",
            content=_dumps({"epsilon": epsilon}),
            headers={"content-type": "application/json"},
        )
        done: dict[str, Any] = response.json()
        return done

    # -- SMART apps on the ledger ----------------------------------------------------------

    def apps(self, org: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get_json("/v1/apps", org=org)["items"]
        return items

    def register_app(self, app: Mapping[str, Any]) -> dict[str, Any]:
        """Register an app (as an organisation's admin); a confidential app without keys gets
        its ``client_secret`` here, once."""
        done: dict[str, Any] = self.post_json("/v1/apps", app)
        return done

    def app_step(self, client_id: str, step: str, reason: str | None = None) -> dict[str, Any]:
        """``suspend`` or ``resume`` an app of the caller's organisation."""
        body = {"reason": reason} if reason else {}
        done: dict[str, Any] = self.post_json(f"/v1/apps/{client_id}/{step}", body)
        return done

    # -- SMART Health Links -----------------------------------------------------------------

    def make_link(self, patient: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Make a SMART Health Link: the node signs ``links.create`` when it holds the
        patient's key; otherwise this client signs it with its own (the patient's), as the
        node prepared it. ``expires`` must then be absolute (seconds since the epoch)."""
        path = f"/v1/patients/{patient}/links"
        try:
            made: dict[str, Any] = self.post_json(path, request)
            return made
        except RemoteError as exc:
            if exc.code != "SIGN_YOURSELF" or self.keypair is None:
                raise
        step = self.post_json(path, {**request, "prepare": True})["sign"]
        args = step.get("args") if isinstance(step, dict) else None
        # sign only the links.create of what was asked: never whatever a node returns
        if (
            not isinstance(args, dict)
            or (step.get("contract"), step.get("method")) != ("links", "create")
            or set(args) - {"custodian", "types", "flags", "exp"}
            or args.get("flags", "") != _link_flags(request)
            or ("exp" in args) != (request.get("expires") is not None)
            or ("exp" in args and args["exp"] != int(request["expires"]) * 1000)
        ):
            raise CareLedgerError(
                "the node prepared another transaction than the link asked for",
                code="WRONG_PREPARED",
            )
        envelope = self.build("links", "create", args)
        made = self.post_json(path, {**request, "envelope": envelope})
        return made

    def links(self, patient: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get_json(f"/v1/patients/{patient}/links")["links"]
        return items

    def revoke_link(self, patient: str, link: str) -> dict[str, Any]:
        path = f"/v1/patients/{patient}/links/{link}"
        try:
            done: dict[str, Any] = self._request("DELETE", path).json()
            return done
        except RemoteError as exc:
            if exc.code != "SIGN_YOURSELF" or self.keypair is None:
                raise
        envelope = self.build("links", "revoke", {"link": link})
        done = self._request("DELETE", path, content=_dumps({"envelope": envelope}),
                             headers={"content-type": "application/json"}).json()  # fmt: skip
        return done

    def login(self, keypair: KeyPair | None = None, *, scope: str | None = None) -> str:
        key = keypair or self.keypair
        if key is None:
            raise ValidationError("a key pair is needed to log in", code="NO_KEY")
        challenge = self._request("POST", "/v1/auth/challenge").json()
        signature = b64url_encode(key.sign(challenge["message"].encode()))
        token = self._request(
            "POST",
            "/v1/auth/token",
            json={
                "public_key": key.public_b64,
                "challenge": challenge["challenge"],
                "signature": signature,
                **({"scope": scope} if scope else {}),
            },
        ).json()["access_token"]
        self._http.headers["authorization"] = f"Bearer {token}"
        return str(token)


def _dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)
