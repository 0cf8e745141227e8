"""The demo consortium: six organisations, their staff, a few patients, and some history.

Used by ``careledger init --demo`` (and ``make run``) so a new user sees a living chain.
Keys are written unencrypted (mode 0600) into DIR/keys: demo only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from careledger.core.keys import KeyPair
from careledger.core.tx import make_body, sign_body
from careledger.keyfile import generate_keypair, write_key_file

DEMO_CHAIN = "careledger.demo"

# Organisations without a node of their own are served by St Mary's (served_by); in consortium
# mode each registers its own node, which then alone acts for its members.
DEMO_ORGS = [
    {"id": "st-mary", "name": "St Mary's Hospital", "kind": "hospital"},
    {
        "id": "northside-clinic",
        "name": "Northside Clinic",
        "kind": "clinic",
        "served_by": "st-mary",
    },
    {"id": "city-pharmacy", "name": "City Pharmacy", "kind": "pharmacy", "served_by": "st-mary"},
    {
        "id": "acme-pharma",
        "name": "Acme Pharmaceuticals",
        "kind": "manufacturer",
        "served_by": "st-mary",
    },
    {
        "id": "medline-dist",
        "name": "Medline Distribution",
        "kind": "distributor",
        "served_by": "st-mary",
    },
    {"id": "trialco", "name": "TrialCo Research", "kind": "sponsor", "served_by": "st-mary"},
]

# (member id, display name, org, roles). The first is the node's own identity.
DEMO_MEMBERS = [
    ("st-mary-node", "St Mary's node", "st-mary", ["node"]),
    ("st-mary-admin", "St Mary's administrator", "st-mary", ["admin"]),
    ("dr-ana-silva", "Dr Ana Silva", "st-mary", ["clinician", "investigator"]),
    ("northside-admin", "Northside administrator", "northside-clinic", ["admin"]),
    ("dr-ben-okafor", "Dr Ben Okafor", "northside-clinic", ["clinician"]),
    ("rn-sam-osei", "Sam Osei, RN", "northside-clinic", ["nurse"]),
    ("city-pharmacy-admin", "City Pharmacy administrator", "city-pharmacy", ["admin"]),
    ("ph-chen-li", "Chen Li, pharmacist", "city-pharmacy", ["pharmacist"]),
    ("acme-admin", "Acme administrator", "acme-pharma", ["admin", "manufacturer"]),
    ("medline-admin", "Medline administrator", "medline-dist", ["admin", "distributor"]),
    ("trialco-admin", "TrialCo administrator", "trialco", ["admin", "sponsor"]),
    ("patient-0001", "Patient 0001", "st-mary", ["patient"]),
    ("patient-0002", "Patient 0002", "st-mary", ["patient"]),
    ("patient-0003", "Patient 0003", "northside-clinic", ["patient"]),
    # Each organisation's own node, for consortium mode (`careledger cluster up`).
    ("city-pharmacy-node", "City Pharmacy node", "city-pharmacy", ["node"]),
    ("acme-node", "Acme node", "acme-pharma", ["node"]),
    ("northside-node", "Northside node", "northside-clinic", ["node"]),
    ("medline-node", "Medline node", "medline-dist", ["node"]),
    ("trialco-node", "TrialCo node", "trialco", ["node"]),
]
CLUSTER_NODES = [m for m, _, _, r in DEMO_MEMBERS if r == ["node"]]
NODE_MEMBER = "st-mary-node"


def demo_keys(keys_dir: Path) -> dict[str, KeyPair]:
    keys: dict[str, KeyPair] = {}
    for member_id, *_ in DEMO_MEMBERS:
        keypair = generate_keypair()
        write_key_file(keys_dir / f"{member_id}.key", keypair, name=member_id)
        keys[member_id] = keypair
    return keys


def demo_genesis(keys: dict[str, KeyPair], time_ms: int, ruleset: str) -> dict[str, Any]:
    return {
        "ruleset": ruleset,
        "chain": DEMO_CHAIN,
        "time": time_ms,
        "orgs": DEMO_ORGS,
        "members": [
            {"id": m, "name": n, "org": o, "roles": r, "public_key": keys[m].public_b64}
            for m, n, o, r in DEMO_MEMBERS
        ],
    }


def demo_history(
    keys: dict[str, KeyPair], keys_dir: Path, created: str
) -> list[list[dict[str, Any]]]:
    """Signed envelopes in blocks: staff added, a key rotated, an organisation voted in."""
    nonce = iter(range(1, 1_000_000))
    new_keys: dict[str, KeyPair] = {}

    def new_key(member_id: str) -> KeyPair:
        keypair = generate_keypair()
        write_key_file(keys_dir / f"{member_id}.key", keypair, name=member_id)
        new_keys[member_id] = keypair
        return keypair

    def tx(
        signer: str, method: str, args: dict[str, Any], key: KeyPair | None = None
    ) -> dict[str, Any]:
        keypair = key or keys[signer]
        body = make_body(
            chain=DEMO_CHAIN,
            contract="identity",
            method=method,
            args=args,
            signer=keypair.public_b64,
            nonce=next(nonce),
            created=created,
        )
        return sign_body(body, keypair)

    nurse = new_key("rn-dana-kim")
    tech = new_key("ph-tech-omar")
    rotated = generate_keypair()
    newcomer = new_key("harbor-admin")
    proposal_block = [
        tx(
            "st-mary-admin",
            "add_member",
            {
                "id": "rn-dana-kim",
                "name": "Dana Kim, RN",
                "roles": ["nurse"],
                "public_key": nurse.public_b64,
            },
        ),
        tx(
            "city-pharmacy-admin",
            "add_member",
            {
                "id": "ph-tech-omar",
                "name": "Omar Haddad, pharmacy technician",
                "roles": ["pharmacist"],
                "public_key": tech.public_b64,
            },
        ),
        tx(
            "dr-ben-okafor",
            "rotate_key",
            {"member": "dr-ben-okafor", "public_key": rotated.public_b64},
        ),
        tx(
            "st-mary-admin",
            "propose_org",
            {
                "org": {"id": "harbor-pharmacy", "name": "Harbor Pharmacy", "kind": "pharmacy"},
                "admin": {
                    "id": "harbor-admin",
                    "name": "Harbor administrator",
                    "public_key": newcomer.public_b64,
                },
            },
        ),
    ]
    write_key_file(keys_dir / "dr-ben-okafor.key", rotated, name="dr-ben-okafor", overwrite=True)
    keys["dr-ben-okafor"] = rotated
    return [proposal_block]


def vote_block(
    keys: dict[str, KeyPair], proposal: str, created: str, nonce_start: int
) -> list[dict[str, Any]]:
    nonces: Callable[[], int] = iter(range(nonce_start, nonce_start + 100)).__next__
    out = []
    for voter in ("northside-admin", "city-pharmacy-admin", "acme-admin"):
        body = make_body(
            chain=DEMO_CHAIN,
            contract="identity",
            method="vote",
            args={"proposal": proposal, "approve": True},
            signer=keys[voter].public_b64,
            nonce=nonces(),
            created=created,
        )
        out.append(sign_body(body, keys[voter]))
    return out


SYNTHEA_DIR = Path(__file__).resolve().parent / "demo_data" / "synthea"


def load_demo_records(data_dir: Path) -> dict[str, Any]:
    """Import the Synthea patients as St Mary's records, and have two of them grant consents."""
    from careledger.config import Settings
    from careledger.health.importer import import_bundles
    from careledger.health.service_sink import ServiceSink
    from careledger.jsonio import loads
    from careledger.node import Node
    from careledger.wiring import records_for

    bundles = [loads(path.read_bytes()) for path in sorted(SYNTHEA_DIR.glob("*.json"))]
    node = Node(Settings.load(data_dir))
    node.start()
    records = records_for(node)
    try:
        report = import_bundles(bundles, ServiceSink(records, records.node_caller()))
        grants = [
            # The first patient lets Northside Clinic read everything for treatment;
            # the second lets City Pharmacy read medication orders.
            {
                "grantee": {"org": "northside-clinic"},
                "actions": ["read"],
                "resource_types": ["*"],
                "purposes": ["TREAT"],
            },
            {
                "grantee": {"org": "city-pharmacy"},
                "actions": ["read"],
                "resource_types": ["MedicationRequest"],
                "purposes": ["TREAT"],
            },
        ]
        for patient, args in zip(report.patients, grants, strict=False):
            key = records.custodial_key(patient)
            assert key is not None
            (receipt,) = node.execute([("consent", "grant", args)], keypair=key)
            if receipt["result"] != "accepted":
                raise RuntimeError(f"demo consent refused: {receipt['code']}")
    finally:
        records.close()
        node.stop()
    return report.to_json()


# -- drug supply chain ------------------------------------------------------------------------

DEMO_PREFIX = "0312345"  # Acme's GS1 company prefix (7 digits)


def _cd(digits: str) -> str:
    from careledger.supply.identifiers import gs1_check_digit

    return digits + gs1_check_digit(digits)


DEMO_LOCATIONS = {
    "acme-admin": (_cd(DEMO_PREFIX + "00001"), "Acme plant, Springfield"),
    "medline-admin": (_cd("0614142" + "00002"), "Medline distribution centre"),
    "ph-chen-li": (_cd("0614142" + "00003"), "City Pharmacy, High Street"),
}
DEMO_PRODUCTS = [  # (GTIN-14, lot, expiry ISO date, name)
    (_cd("0" + DEMO_PREFIX + "10001"), "AMX2601", "2027-11-30", "Amoxicillin 500 mg, 21 caps"),
    (_cd("0" + DEMO_PREFIX + "10002"), "MET2602", "2028-02-29", "Metformin 850 mg, 56 tabs"),
]


def load_demo_supply(data_dir: Path) -> None:
    """Acme commissions two products, packs cases, ships them via Medline to City Pharmacy,
    which unpacks one case and dispenses three packs; one pack is under investigation.

    Every step is an EPCIS 2.0 document captured as the organisation's own member, so the
    demo's events are queryable at /epcis/events and its units verifiable at /v1/supply/verify.
    """
    from careledger.callers.caller import Caller
    from careledger.callers.scopes import default_scopes, parse_scopes
    from careledger.config import Settings
    from careledger.node import Node
    from careledger.supply import epcis_build as b
    from careledger.wiring import epcis_for

    roles = {m: (o, frozenset(r)) for m, _, o, r in DEMO_MEMBERS}
    plen = len(DEMO_PREFIX)
    settings = Settings.load(data_dir)
    node = Node(settings)
    node.start()
    epcis, repository = epcis_for(node, settings)
    clock = iter(range(10, 60))

    def caller(member: str) -> Caller:
        org, member_roles = roles[member]
        return Caller(member, org, member_roles, parse_scopes(default_scopes(member_roles)))

    def act(member: str, method: str, args: dict[str, Any]) -> None:
        call = {"actor": member, "method": method, "args": args}
        (receipt,) = node.execute([("supply", "on_behalf", call)])
        if receipt["result"] != "accepted":
            raise RuntimeError(f"demo {method} refused: {receipt['code']}")

    def capture(member: str, *events: dict[str, Any]) -> None:
        doc = b.document(events, "2026-11-01T09:00:00.000Z")
        status = epcis.capture(caller(member), doc)
        if not status["success"]:
            raise RuntimeError(f"demo capture refused: {status['errors']}")

    def when() -> str:
        return f"2026-11-01T09:{next(clock):02d}:00.000Z"

    try:
        act("acme-admin", "register_prefix", {"prefix": DEMO_PREFIX})
        for member, (gln, name) in DEMO_LOCATIONS.items():
            act(member, "register_location", {"gln": gln, "name": name})
        plant, dc, pharmacy = (b.sgln_urn(g, plen) for g, _ in DEMO_LOCATIONS.values())
        units: dict[str, list[str]] = {}
        for gtin, lot, expiry, _ in DEMO_PRODUCTS:
            units[gtin] = [b.sgtin_urn(gtin, f"{lot}{i:04d}", plen) for i in range(1, 25)]
            capture(
                "acme-admin",
                b.object_event(
                    time=when(),
                    biz_step="commissioning",
                    action="ADD",
                    epcs=units[gtin],
                    location=plant,
                    lot=lot,
                    expiry_iso=expiry,
                ),
            )
        amox, metformin = (units[p[0]] for p in DEMO_PRODUCTS)
        cases = [b.sscc_urn(_cd("0" + DEMO_PREFIX + f"00000000{i}"), plen) for i in (1, 2)]
        to_dc = [*cases, *metformin]
        capture(
            "acme-admin",
            b.aggregation_event(time=when(), parent=cases[0], children=amox[:12], location=plant),
            b.aggregation_event(time=when(), parent=cases[1], children=amox[12:], location=plant),
            b.object_event(
                time=when(),
                biz_step="shipping",
                action="OBSERVE",
                epcs=to_dc,
                location=plant,
                destination=dc,
            ),
        )
        observe = {"action": "OBSERVE", "location": dc}
        capture(
            "medline-admin",
            b.object_event(time=when(), biz_step="receiving", epcs=to_dc, **observe),
        )
        to_pharmacy = [cases[0], *metformin[:12]]
        capture(
            "medline-admin",
            b.object_event(
                time=when(),
                biz_step="shipping",
                epcs=to_pharmacy,
                destination=pharmacy,
                **observe,
            ),
        )
        at_pharmacy = {"action": "OBSERVE", "location": pharmacy}
        capture(
            "ph-chen-li",
            b.object_event(time=when(), biz_step="receiving", epcs=to_pharmacy, **at_pharmacy),
            b.aggregation_event(
                time=when(), parent=cases[0], children=[], location=pharmacy, pack=False
            ),
            *(
                b.object_event(time=when(), biz_step="dispensing", epcs=[epc], **at_pharmacy)
                for epc in amox[:3]
            ),
        )
        suspect = {"gtin": DEMO_PRODUCTS[1][0], "serial": f"{DEMO_PRODUCTS[1][1]}0005"}
        act("ph-chen-li", "flag_suspect", {**suspect, "reason": "carton seal broken"})
        act("ph-chen-li", "investigate", {**suspect, "note": "photos sent to Acme, ref Q-118"})
    finally:
        repository.close()
        node.stop()


DEMO_STUDY = "CARDIO-2026"


def load_demo_trial(data_dir: Path) -> None:
    """TrialCo registers a study at St Mary's, funds its visit payments, and asks St Mary's
    how many of its patients are eligible (the node answers when it serves: see recruitment)."""
    from careledger.config import Settings
    from careledger.keyfile import read_key_file
    from careledger.node import Node

    sponsor = read_key_file(data_dir / "keys" / "trialco-admin.key")[1]
    registration = {
        "study": DEMO_STUDY,
        "registry_id": "NCT00000000",
        "title": "Cardiovascular outcomes in adults (demo)",
        "protocol_hash": hashlib.sha256(b"CARDIO-2026 protocol v1").hexdigest(),
        "sap_hash": hashlib.sha256(b"CARDIO-2026 statistical analysis plan").hexdigest(),
        "primary": ["Major adverse cardiovascular events at 12 months"],
        "secondary": ["All-cause hospitalisation at 12 months"],
        "eligibility": {"age": [18, 90]},
        "visits": [
            {"id": "baseline", "day": 0, "window": 7},
            {"id": "month-3", "day": 90, "window": 14},
        ],
        "sites": ["st-mary", "northside-clinic"],
    }
    calls = [
        ("trials", "register", registration),
        ("payments", "deposit", {"credits": 100_000, "reference": "demo funding"}),
        (
            "payments",
            "open_study",
            {"study": DEMO_STUDY, "schedule": {"baseline": 50, "month-3": 75}},
        ),
        ("payments", "fund", {"study": DEMO_STUDY, "credits": 25_000}),
        ("trials", "feasibility", {"study": DEMO_STUDY}),
    ]
    node = Node(Settings.load(data_dir))
    node.start()
    try:
        for call in calls:
            (receipt,) = node.execute([call], keypair=sponsor)
            if receipt["result"] != "accepted":
                raise RuntimeError(f"demo trial step {call[1]} refused: {receipt['code']}")
    finally:
        node.stop()


DEMO_DEVICE = "oxi-demo-1"
MIMIC_DIR = Path(__file__).parent / "demo_data" / "mimic"


def load_demo_monitoring(data_dir: Path) -> None:
    """A pulse oximeter at St Mary's bound to a demo patient (their consent), an SpO2 < 90 rule
    set by Dr Silva, 72 minutes of MIMIC-II numerics ingested (five alerts), and a video visit
    tomorrow. The device's key is kept in keys/devices/ for ``careledger devices simulate``."""
    import time

    from careledger.config import Settings
    from careledger.keyfile import read_key_file
    from careledger.monitoring import mimic
    from careledger.monitoring.device import sign_batch
    from careledger.node import Node
    from careledger.wiring import readings_for, records_session, visits_for

    keys = data_dir / "keys"
    patient_file = sorted((keys / "patients").glob("*.key"))[-1]
    patient_key = read_key_file(patient_file)[1]
    patient = patient_file.stem
    device_key = generate_keypair()
    (keys / "devices").mkdir(exist_ok=True)
    write_key_file(keys / "devices" / f"{DEMO_DEVICE}.key", device_key, name=DEMO_DEVICE)
    admin = read_key_file(keys / "st-mary-admin.key")[1]
    clinician = read_key_file(keys / "dr-ana-silva.key")[1]
    rule = {"id": "spo2-low", "kind": "threshold", "code": "59408-5", "op": "<", "value": 90}
    now = int(time.time() * 1000)
    visit = {
        "id": "visit-demo-1",
        "patient": patient,
        "start": now + 24 * 3_600_000,
        "end": now + 24 * 3_600_000 + 30 * 60_000,
        "link_hash": hashlib.sha256(b"https://video.example/careledger-demo").hexdigest(),
        "recording": False,
    }
    steps = [
        (
            admin,
            "monitoring",
            "register_device",
            {"id": DEMO_DEVICE, "model": "PulseOx 3", "public_key": device_key.public_b64},
        ),
        (patient_key, "monitoring", "bind", {"device": DEMO_DEVICE}),
        (
            clinician,
            "monitoring",
            "set_rules",
            {"patient": patient, "device": DEMO_DEVICE, "rules": [rule]},
        ),
        (clinician, "visits", "schedule", visit),
    ]
    settings = Settings.load(data_dir)
    node = Node(settings)
    node.start()
    store, ingest = readings_for(node, settings)
    try:
        for key, contract, method, args in steps:
            (receipt,) = node.execute([(contract, method, args)], keypair=key)
            if receipt["result"] != "accepted":
                raise RuntimeError(f"demo monitoring step {method} refused: {receipt['code']}")
        with records_session(node) as records:
            links = visits_for(records, settings)
            links.keep_link(
                "visit-demo-1", "https://video.example/careledger-demo", "oxygen saturation review"
            )
            links.close()
        ingest.start()
        start = now - 4 * 60_000  # replayed from the binding on: 72 minutes of numerics
        csv = MIMIC_DIR / "s25047-2704-05-04-10-44n.csv"
        for seq, batch in enumerate(mimic.batches(csv, start_ms=start), start=1):
            ingest.accept(
                DEMO_DEVICE,
                sign_batch(device_key, {"device": DEMO_DEVICE, "seq": seq, "compact": batch}),
            )
    finally:
        ingest.stop()
        store.close()
        node.stop()
