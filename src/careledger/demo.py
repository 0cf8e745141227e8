"""The demo consortium: six organisations, their staff, a few patients, and some history.

Used by ``careledger init --demo`` (and ``make run``) so a new user sees a living chain.
Keys are written unencrypted (mode 0600) into DIR/keys: demo only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from careledger.core.keys import KeyPair
from careledger.core.tx import make_body, sign_body
from careledger.keyfile import generate_keypair, write_key_file

DEMO_CHAIN = "careledger.demo"

DEMO_ORGS = [
    {"id": "st-mary", "name": "St Mary's Hospital", "kind": "hospital"},
    {"id": "northside-clinic", "name": "Northside Clinic", "kind": "clinic"},
    {"id": "city-pharmacy", "name": "City Pharmacy", "kind": "pharmacy"},
    {"id": "acme-pharma", "name": "Acme Pharmaceuticals", "kind": "manufacturer"},
    {"id": "medline-dist", "name": "Medline Distribution", "kind": "distributor"},
    {"id": "trialco", "name": "TrialCo Research", "kind": "sponsor"},
]

# (member id, display name, org, roles). The first is the node's own identity.
DEMO_MEMBERS = [
    ("st-mary-node", "St Mary's node", "st-mary", ["node"]),
    ("st-mary-admin", "St Mary's administrator", "st-mary", ["admin"]),
    ("dr-ana-silva", "Dr Ana Silva", "st-mary", ["clinician"]),
    ("northside-admin", "Northside administrator", "northside-clinic", ["admin"]),
    ("dr-ben-okafor", "Dr Ben Okafor", "northside-clinic", ["clinician"]),
    ("city-pharmacy-admin", "City Pharmacy administrator", "city-pharmacy", ["admin"]),
    ("ph-chen-li", "Chen Li, pharmacist", "city-pharmacy", ["pharmacist"]),
    ("acme-admin", "Acme administrator", "acme-pharma", ["admin", "manufacturer"]),
    ("medline-admin", "Medline administrator", "medline-dist", ["admin", "distributor"]),
    ("trialco-admin", "TrialCo administrator", "trialco", ["admin", "sponsor"]),
    ("patient-0001", "Patient 0001", "st-mary", ["patient"]),
    ("patient-0002", "Patient 0002", "st-mary", ["patient"]),
    ("patient-0003", "Patient 0003", "northside-clinic", ["patient"]),
]
NODE_MEMBER = "st-mary-node"


def demo_keys(keys_dir: Path) -> dict[str, KeyPair]:
    keys: dict[str, KeyPair] = {}
    for member_id, *_ in DEMO_MEMBERS:
        keypair = generate_keypair()
        write_key_file(keys_dir / f"{member_id}.key", keypair, name=member_id)
        keys[member_id] = keypair
    return keys


def demo_genesis(keys: dict[str, KeyPair], time_ms: int) -> dict[str, Any]:
    return {
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
    from careledger.health.service import HealthRecords, ServiceSink
    from careledger.jsonio import loads
    from careledger.node import Node

    bundles = [loads(path.read_bytes()) for path in sorted(SYNTHEA_DIR.glob("*.json"))]
    node = Node(Settings.load(data_dir))
    node.start()
    records = HealthRecords.for_node(node)
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
