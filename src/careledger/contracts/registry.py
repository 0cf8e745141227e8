"""The rulesets this software knows, by name, and which one a chain runs at a height.

Every ruleset is built from the one before it by replacing parts; none is ever edited once a
chain may have used it (tests/vectors/chains replays recorded chains to their header hashes).
The chain, not this module, decides when a ruleset applies: see :mod:`careledger.contracts.ruleset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from careledger.contracts.base import StateReader
from careledger.contracts.ruleset import Ruleset, name_at, schedule
from careledger.errors import UnknownRuleset


class Registry:
    def __init__(self, rulesets: Sequence[Ruleset]) -> None:
        if not rulesets:
            raise ValueError("a registry needs at least one ruleset")
        names = [r.name for r in rulesets]
        if len(set(names)) != len(names):
            raise ValueError("ruleset names must be unique")
        self._rulesets = {r.name: r for r in rulesets}
        self.latest = rulesets[-1]

    def names(self) -> list[str]:
        return list(self._rulesets)

    def knows(self, name: str) -> bool:
        return name in self._rulesets

    def named(self, name: str) -> Ruleset:
        found = self._rulesets.get(name)
        if found is None:
            raise UnknownRuleset(
                f"this node does not know ruleset {name!r} (it knows {self.names()}): "
                "upgrade the node software"
            )
        return found

    def at(self, height: int, read: StateReader) -> Ruleset:
        """The ruleset in force at ``height``, by the schedule in the state ``read`` sees."""
        name = name_at(read, height)
        if name not in self._rulesets:
            raise UnknownRuleset(
                f"ruleset {name!r}, in force at height {height}, is unknown to this node "
                f"(it knows {self.names()}): upgrade the node software to go on"
            )
        return self._rulesets[name]

    def unknown_scheduled(self, read: StateReader) -> list[tuple[int, str]]:
        """Scheduled (height, name) pairs this software cannot execute."""
        return [(h, n) for h, n in schedule(read) if n not in self._rulesets]


def r0() -> Ruleset:
    """The rules every chain made before rulesets had names runs; frozen."""
    from careledger.contracts.audit import AuditV1
    from careledger.contracts.consent import ConsentV1
    from careledger.contracts.identity import (
        ORG_KINDS,
        ROLES,
        IdentityV1,
        act_for,
        signer_of_member,
    )
    from careledger.contracts.monitoring import MonitoringV1
    from careledger.contracts.payments import PaymentsV1
    from careledger.contracts.records import RecordsV1
    from careledger.contracts.supply import SupplyV1
    from careledger.contracts.trials import TrialsV1
    from careledger.contracts.visits import VisitsV1

    contracts = [
        IdentityV1(),
        RecordsV1(),
        ConsentV1(),
        AuditV1(),
        SupplyV1(),
        PaymentsV1(),
        MonitoringV1(),
        TrialsV1(),
        VisitsV1(),
    ]
    return Ruleset(
        name="r0",
        contracts={c.name: c for c in contracts},
        roles=ROLES,
        org_kinds=ORG_KINDS,
        kind_roles=None,
        exact_ids=False,
        resolve_signer=signer_of_member,
        act_for=act_for,
        notes="the first rules; no way to schedule another ruleset",
    )


def r1() -> Ruleset:
    """r0, and the organisations can schedule the next ruleset by a majority vote."""
    from careledger.contracts.identity import IdentityV2

    return r0().derive(
        "r1",
        contracts=[IdentityV2()],
        notes="identity.propose_ruleset: rulesets activated by a vote of the organisations",
    )


def r2() -> Ruleset:
    """r1, with roles that follow the organisation, patients' keys the patients', exact ids."""
    from careledger.contracts.consent import ConsentV2
    from careledger.contracts.identity import (
        KIND_ROLES,
        ROLES_R2,
        IdentityV3,
        signer_by_org_kind,
    )

    return r1().derive(
        "r2",
        contracts=[IdentityV3(), ConsentV2()],
        roles=ROLES_R2,
        kind_roles=KIND_ROLES,
        exact_ids=True,
        resolve_signer=signer_by_org_kind,
        notes=(
            "roles limited by organisation kinds (set at admission), patient keys changed only "
            "by the patient or the patient's recovery path, custodial keys marked, ids matched "
            "whole; break-glass needs a care relationship or a colleague's co-signature, one at "
            "a time and two a day per clinician and patient, and names the custodian"
        ),
    )


def r3() -> Ruleset:
    """r2, with EPCIS events read by the ledger itself and anchored only by a party to them."""
    from careledger.contracts.supply import SupplyV2

    return r2().derive(
        "r3",
        contracts=[SupplyV2()],
        notes=(
            "supply.anchor_events carries the events: every node recomputes their CBV 2.0 "
            "hashes and derives their unit operations; only the organisation at whose "
            "location an event happened anchors it"
        ),
    )


def r4() -> Ruleset:
    """r3, and a patient erases their device readings (crypto-shredded by the nodes)."""
    from careledger.contracts.monitoring import MonitoringV2

    return r3().derive(
        "r4",
        contracts=[MonitoringV2()],
        notes="monitoring.erase_readings: a patient's readings are shredded, their roots kept",
    )


def r5() -> Ruleset:
    """r4, and recruitment counts under differential privacy, sealed for the sponsor and site."""
    from careledger.contracts.trials import TrialsV2

    return r4().derive(
        "r5",
        contracts=[TrialsV2()],
        notes=(
            "trials.feasibility charges epsilon 0.5 per site to a privacy budget per sponsor "
            "and site (trials.set_privacy_budget); trials.answer carries a noisy count or "
            "'withheld', sealed for the answering node, the sponsor's member who asked and "
            "the sponsor's node"
        ),
    )


def r6() -> Ruleset:
    """r5, and apps on the ledger (SMART on FHIR clients), named in every access they make."""
    from careledger.contracts.apps import AppsV1
    from careledger.contracts.audit import AuditV2

    return r5().derive(
        "r6",
        contracts=[AppsV1(), AuditV2()],
        notes=(
            "apps.register/update/suspend/resume by an organisation's admin; audit.access "
            "names the app (client id) behind an access, refused if it is unknown or "
            "suspended; a backend app accesses as itself for its organisation: as custodian "
            "of the organisation's records (export included) or under a consent to the "
            "organisation"
        ),
    )


def r7() -> Ruleset:
    """r6, and access events that say which FHIR interaction they were."""
    from careledger.contracts.audit import AuditV3

    return r6().derive(
        "r7",
        contracts=[AuditV3()],
        notes=(
            "audit.access may carry interaction (read, vread, history, search, create, update,"
            " patch, delete, export), one that fits its action: BALP's query, read, create and"
            " update told apart"
        ),
    )


def r8() -> Ruleset:
    """r7, and each custodian's holdings of a patient's records, attested for bulk exports."""
    from careledger.contracts.records import RecordsV2

    return r7().derive(
        "r8",
        contracts=[RecordsV2()],
        notes=(
            "records keep, per patient, custodian and type, a count and hash chain of every "
            "anchor and shred; records.attest_holdings is accepted only if it names the "
            "chains' heads at its block, so a bulk export proves it left nothing out"
        ),
    )


def r9() -> Ruleset:
    """r8, and SMART Health Links and Cards a patient makes, each opening an access."""
    from careledger.contracts.audit import AuditV4
    from careledger.contracts.links import LinksV1

    return r8().derive(
        "r9",
        contracts=[LinksV1(), AuditV4()],
        notes=(
            "links.create/revoke by the patient (or a delegate), links.disable by the serving "
            "node (passcode guessed too often); audit.access on the 'link' basis for each "
            "opening, accepted only while the link is active, unexpired and covers the types, "
            "with the recipient's declared name sealed for the patient and node; "
            "links.issue_card/revoke_card record SMART Health Cards and the issuer's "
            "revocation list"
        ),
    )


def r10() -> Ruleset:
    """r9, and an organisation's own records, about no patient (directory, definitions, Group)."""
    from careledger.contracts.records import RecordsV3

    return r9().derive(
        "r10",
        contracts=[RecordsV3()],
        notes=(
            "records.anchor without a patient for the types of records.ORG_RECORD_TYPES "
            "(Organization, Practitioner, Location, Medication, Questionnaire, Group, ...): "
            "indexed by custodian, chained in holdings of their own (attested without a "
            "patient), shredded by the custodian's admin or node; every other type names "
            "its patient (NO_PATIENT)"
        ),
    )


def r11() -> Ruleset:
    """r10, and every other R4 type about no patient held as the organisation's own record."""
    from careledger.contracts.records import RecordsV4

    return r10().derive(
        "r11",
        contracts=[RecordsV4()],
        notes=(
            "records.anchor without a patient also for the types r10 left out "
            "(records.ORG_RECORD_TYPES_V4: CapabilityStatement, StructureMap, TestReport, the "
            "evidence syntheses, MedicinalProduct* and Substance*, CatalogEntry) and for the "
            "types about a patient only when they name one (Schedule, Slot, DeviceMetric, "
            "SupplyRequest, PaymentNotice, PaymentReconciliation, VerificationResult, Linkage, "
            "EnrollmentResponse, Account, Contract, BiologicallyDerivedProduct, MessageHeader, "
            "Provenance)"
        ),
    )


@cache
def default_registry() -> Registry:
    """Every ruleset this software knows, oldest first; the last is what new chains start on."""
    return Registry([r0(), r1(), r2(), r3(), r4(), r5(), r6(), r7(), r8(), r9(), r10(), r11()])
