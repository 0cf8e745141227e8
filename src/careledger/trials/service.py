"""Trials workflows on a node: registration, enrolment, e-consent, CRF capture, visits, recruitment.

Staff actions (sponsor, investigator) are ``trials.on_behalf`` transactions the node signs for
the member it authenticated, so roles and sites are judged on the ledger as that member's. A
participant's consent and withdrawal are signed with the participant's own key: sent as a
signed envelope, or signed here with the key this node keeps for a patient who has none.

A CRF entry is a FHIR QuestionnaireResponse or Observation about the participant: it is checked
against the trial first (a dry run of the capture), sealed in the vault and anchored like any
record, then anchored by the trial with the same salted hash. If the trial refuses it after all
(a withdrawal committed in between), the records are shredded: nothing half-written remains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from careledger.callers.caller import Caller
from careledger.contracts.payments import NAMESPACE as PAYMENTS
from careledger.contracts.payments import balance_key
from careledger.contracts.trials import (
    CRF_TYPES,
    MAX_BUDGET_MILLI,
    answer_of,
    budget_sponsors,
    privacy_budget,
    query_of,
    study_of,
)
from careledger.contracts.trials import NAMESPACE as TRIALS
from careledger.core.tx import decode_envelope, make_body, sign_body
from careledger.errors import Forbidden, NotFound, Rejected, ValidationError
from careledger.fhir.extract import patient_id as patient_of
from careledger.health.service import HealthRecords
from careledger.node import Node
from careledger.patient_signing import sign_as_patient
from careledger.sealing import open_sealed
from careledger.trials.recruitment import RecruitmentResponder, RecruitmentStore
from careledger.trials.registration import from_ctgov, from_research_study

PARTICIPANT_METHODS = frozenset({"consent", "withdraw"})
MAX_CRF_ENTRIES = 100
MAX_SPONSORS_LISTED = 1_000
ANSWER_STATUSES = frozenset({"released", "withheld", "not_computable"})


def _refused(receipt: Mapping[str, Any], why: Any) -> Rejected:
    message = why.message if why is not None and why.code == receipt["code"] else ""
    return Rejected(str(receipt["code"]), message or "the ledger refused the transaction")


class TrialsService:
    def __init__(self, node: Node, records: HealthRecords, store: RecruitmentStore) -> None:
        self.node = node
        self.ledger = node.ledger
        self.records = records
        self.store = store

    # -- reads ---------------------------------------------------------------------------

    def study(self, study: str) -> dict[str, Any]:
        entry = study_of(self.ledger.state, study)
        if entry is None:
            raise NotFound(f"no study {study!r}", code="UNKNOWN_STUDY")
        return dict(entry)

    def query(self, caller: Caller, query_id: str) -> dict[str, Any]:
        """A feasibility query with each site's answer; for the sponsor and the sites."""
        query = query_of(self.ledger.state, query_id)
        if query is None:
            raise NotFound("no such feasibility query", code="UNKNOWN_QUERY")
        sponsor = caller.org == query["sponsor"]
        if not sponsor and caller.org not in query["sites"]:
            raise Forbidden("the sponsor and the sites see a query", code="NOT_AUTHORISED")
        answers = {}
        for site in query["sites"]:
            if not sponsor and site != caller.org:
                continue  # a site sees its own answer, not the other sites'
            answer = answer_of(self.ledger.state, query_id, site)
            if answer is not None:
                answers[site] = self._readable(answer)
        released = [a["count"] for a in answers.values() if a["count"] is not None]
        return {
            **{k: query[k] for k in ("id", "sponsor", "study", "criteria", "sites", "invite")},
            "answers": answers,
            "pending": [s for s in query["sites"] if s not in answers],
            "total_released": sum(released),
        }

    def _readable(self, answer: Mapping[str, Any]) -> dict[str, Any]:
        """``{count, reason}`` of an answer; r5's are opened with this node's key."""
        if "sealed" not in answer:
            return {k: answer[k] for k in ("count", "reason")}
        member, seed = self.node.settings.node_name, self.ledger.node_key.seed
        unreadable = {"count": None, "reason": "sealed", "private": True}
        try:
            said = orjson.loads(open_sealed(answer["sealed"], member, seed))
        except (ValidationError, orjson.JSONDecodeError):
            return unreadable
        # a site's node decides what it seals: one malformed answer must not hide the others
        if not isinstance(said, dict) or said.get("status") not in ANSWER_STATUSES:
            return unreadable
        count = said.get("count")
        released = said["status"] == "released"
        if released != (type(count) is int and count >= 0) or (not released and count is not None):
            return unreadable
        return {"count": count, "reason": None if released else said["status"], "private": True}

    def budgets(self, caller: Caller) -> list[dict[str, Any]]:
        """What each sponsor has spent of its privacy budget at the caller's organisation."""
        if not caller.roles & {"admin", "auditor"}:
            raise Forbidden("a site's admin or auditor sees its budgets", code="NOT_AUTHORISED")
        sponsors = budget_sponsors(self.ledger.store.state_keys, caller.org, MAX_SPONSORS_LISTED)
        out = []
        for sponsor in sponsors:
            budget = privacy_budget(self.ledger.state, caller.org, sponsor)
            out.append(
                {
                    "sponsor": sponsor,
                    "queries": budget["queries"],
                    "epsilon_spent": budget["spent"] / 1000,
                    "epsilon_limit": budget["limit"] / 1000,
                }
            )
        return out

    def set_budget(self, caller: Caller, sponsor: str, epsilon: object) -> dict[str, Any]:
        """The site's admin sets what ``sponsor`` may spend here (a new ledger transaction)."""
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
            raise ValidationError("epsilon is a number", code="BAD_ARGS")
        if not 0 <= epsilon <= MAX_BUDGET_MILLI / 1000:
            raise ValidationError(
                f"epsilon is between 0 and {MAX_BUDGET_MILLI // 1000}", code="OUT_OF_RANGE"
            )
        args = {"sponsor": sponsor, "limit_milli": round(epsilon * 1000)}
        receipt = self.node.act_for(TRIALS, caller.member, "set_privacy_budget", args)
        return {"receipt": receipt, "budget": self.budgets(caller)}

    def pay(self, caller: Caller, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """A sponsor's payments step (deposit, open_study, fund, pay_data_use), as the caller."""
        return self.node.act_for(PAYMENTS, caller.member, method, args)

    def balance(self, caller: Caller) -> dict[str, Any]:
        credits = self.ledger.state(PAYMENTS, balance_key(caller.member)) or 0
        return {"account": caller.member, "credits": int(credits)}

    # -- staff actions -------------------------------------------------------------------

    def act(self, caller: Caller, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Run one staff method as the caller; a refusal is raised with its reason."""
        return self.node.act_for(TRIALS, caller.member, method, args)

    def register(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        """Register from ``registration`` (the contract's args), ``ctgov`` (a ClinicalTrials.gov
        API v2 record) or ``researchStudy`` (FHIR R4), with ``study``, ``visits`` and ``sites``."""
        if "registration" in body:
            args = body["registration"]
            if not isinstance(args, dict):
                raise ValidationError("registration is an object", code="BAD_STUDY")
        else:
            study, visits = body.get("study"), body.get("visits") or []
            sites = body.get("sites") or []
            if not isinstance(study, str):
                raise ValidationError("name the study (study: an id)", code="BAD_STUDY")
            if not isinstance(visits, list) or not isinstance(sites, list):
                raise ValidationError("visits and sites are lists", code="BAD_STUDY")
            if isinstance(body.get("ctgov"), dict):
                args = from_ctgov(body["ctgov"], study=study, visits=visits, sites=sites)
            elif isinstance(body.get("researchStudy"), dict):
                args = from_research_study(
                    body["researchStudy"], study=study, visits=visits, sites=sites
                )
            else:
                raise ValidationError("send registration, ctgov or researchStudy", code="BAD_STUDY")
        receipt = self.act(caller, "register", args)
        return {"study": args.get("study"), "receipt": receipt}

    def capture(
        self,
        caller: Caller,
        study: str,
        participant: str,
        visit: str,
        resources: Sequence[Any],
    ) -> dict[str, Any]:
        """CRF entries into the vault, anchored by the trial; all of them or none."""
        if not resources or len(resources) > MAX_CRF_ENTRIES:
            raise ValidationError(f"send 1..{MAX_CRF_ENTRIES} resources", code="BAD_CRF")
        for resource in resources:
            if not isinstance(resource, dict) or resource.get("resourceType") not in CRF_TYPES:
                raise ValidationError(f"CRF entries are one of {sorted(CRF_TYPES)}", code="BAD_CRF")
            if patient_of(resource) != participant:
                raise ValidationError(
                    "each entry's subject is the participant", code="WRONG_SUBJECT"
                )
        base = {"study": study, "participant": participant, "visit": visit}
        self._dry_run(caller, "capture", {**base, "hash": "0" * 64})
        prepared = [
            self.records.prepare(caller, r, record_id=None, patient_of=patient_of)
            for r in resources
        ]

        def anchor(written: list[tuple[str, int, str]]) -> list[tuple[str, str, Mapping[str, Any]]]:
            entries = [{"record": r, "version": v, "hash": h} for r, v, h in written]
            call = {
                "actor": caller.member,
                "method": "capture",
                "args": {**base, "entries": entries},
            }
            return [(TRIALS, "on_behalf", call)]

        stored, (receipt,) = self.records.write_then(caller, prepared, then=anchor)
        entries = [
            {"record": s.record_id, "version": s.version, "hash": s.content_hash} for s in stored
        ]
        if receipt["result"] != "accepted":  # refused after the dry run (a race): undo
            self._undo([s.record_id for s in stored])
            raise Rejected(
                str(receipt["code"]), "the trial refused the entries; their records were shredded"
            )
        return {
            "receipt": receipt,
            "entries": [
                {**e, "type": s.resource_type, "salt": s.salt}
                for e, s in zip(entries, stored, strict=True)
            ],
        }

    def _dry_run(self, caller: Caller, method: str, args: Mapping[str, Any]) -> None:
        """Refuse now what the trial would refuse, before anything is written."""
        call = {"actor": caller.member, "method": method, "args": dict(args)}
        key = self.ledger.node_key
        body = make_body(
            chain=self.ledger.chain,
            contract=TRIALS,
            method="on_behalf",
            args=call,
            signer=key.public_b64,
            nonce=1,  # never submitted: a dry run only
            created="1970-01-01T00:00:00Z",
        )
        why = self.ledger.explain(decode_envelope(sign_body(body, key)))
        if why is not None:
            raise Rejected(why.code, why.message)

    def _undo(self, record_ids: Sequence[str]) -> None:
        calls = [
            ("records", "shred", {"record": r, "reason": "capture_refused"}) for r in record_ids
        ]
        self.node.execute(calls)

    def attest(self, caller: Caller, study: str, participant: str, visit: str) -> dict[str, Any]:
        """The site attests a visit; the participant is paid from the study escrow at once."""
        args = {"study": study, "participant": participant, "visit": visit}
        receipt = self.act(caller, "attest", args)
        ((paid, why),) = self.node.execute_explained([(PAYMENTS, "pay_visit", args)])
        payment: dict[str, Any] = {"result": paid["result"]}
        if paid["result"] != "accepted":
            payment.update(code=paid["code"], message=_refused(paid, why).message)
        return {"receipt": receipt, "payment": payment}

    def feasibility(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        args = {k: body[k] for k in ("study", "criteria", "sites", "invite") if k in body}
        receipt = self.act(caller, "feasibility", args)
        return {"query": receipt["tx_id"], "receipt": receipt}

    # -- participants --------------------------------------------------------------------

    def participant(
        self, caller: Caller, method: str, study: str, envelope: Any | None
    ) -> dict[str, Any]:
        """Consent or withdrawal, signed by the participant (or with the key held for them)."""
        if method not in PARTICIPANT_METHODS:
            raise ValidationError("consent or withdraw", code="BAD_METHOD")
        if "patient" not in caller.roles:
            raise Forbidden("participants consent and withdraw themselves", code="NOT_AUTHORISED")
        entry = self.study(study)
        args: dict[str, Any] = {"study": study}
        if method == "consent":
            args["version"] = entry["version"]
        return sign_as_patient(self.records, caller, TRIALS, method, args, envelope)

    def invitations(self, caller: Caller) -> list[dict[str, Any]]:
        if "patient" not in caller.roles:
            raise Forbidden("invitations are a patient's own", code="NOT_AUTHORISED")
        return self.store.invitations_for(caller.member)

    def respond(self, caller: Caller, invitation: str, answer: str) -> dict[str, Any]:
        if "patient" not in caller.roles:
            raise Forbidden("invitations are a patient's own", code="NOT_AUTHORISED")
        return self.store.respond(caller.member, invitation, answer)

    def invite(self, caller: Caller, study: str, responder: RecruitmentResponder) -> dict[str, Any]:
        """A site's investigator or admin invites the site's opted-in patients to a study."""
        entry = self.study(study)
        if not caller.roles & {"investigator", "admin"} or caller.org not in entry["sites"]:
            raise Forbidden(
                "an investigator or admin at one of the study's sites", code="NOT_AUTHORISED"
            )
        if caller.org != responder.org:
            raise Forbidden("invite through your own organisation's node", code="NOT_AUTHORISED")
        return responder.invite_for_study(study, entry)

    def interested(self, caller: Caller, study: str) -> list[dict[str, Any]]:
        """The site's own patients who said yes, for its investigators (to enrol them)."""
        entry = self.study(study)
        if "investigator" not in caller.roles or caller.org not in entry["sites"]:
            raise Forbidden("an investigator at one of the study's sites", code="NOT_AUTHORISED")
        return self.store.interested(study, caller.org)
