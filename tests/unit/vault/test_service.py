"""Vault: seal and open FHIR resources; tampering behind the vault's back; PHI never at rest."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careledger.core.canonical import canonical_bytes
from careledger.core.keys import KeyPair
from careledger.errors import NotFound, ValidationError, VerificationError
from careledger.vault import SealedRecord, Vault, VaultStore

PATIENT = KeyPair.from_seed(hashlib.sha256(b"patient").digest())
CUSTODIAN = KeyPair.from_seed(hashlib.sha256(b"custodian").digest())
STRANGER = KeyPair.from_seed(hashlib.sha256(b"stranger").digest())

PHI = [
    "Zyxwvut Qqqplorn",
    "Zyxwvut",
    "Qqqplorn",
    "1931-02-27",
    "+44 7700 900461",
    "7700900461",
    "221Q Quillfeather Lane",
    "Vexingham",
    "MRN-88442219",
    "88442219",
]


def patient_resource(version: int = 1) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "rec-1",
        "meta": {"versionId": str(version)},
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-88442219"}],
        "name": [
            {
                "use": "official",
                "text": "Zyxwvut Qqqplorn",
                "family": "Qqqplorn",
                "given": ["Zyxwvut"],
            }
        ],
        "telecom": [
            {"system": "phone", "value": "+44 7700 900461"},
            {"system": "phone", "value": "7700900461"},
        ],
        "gender": "other",
        "birthDate": "1931-02-27",
        "address": [
            {"line": ["221Q Quillfeather Lane"], "city": "Vexingham", "postalCode": "VX1 9ZZ"}
        ],
    }


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "vault.db"


@pytest.fixture
def vault(path: Path) -> Iterator[Vault]:
    store = VaultStore(path)
    yield Vault(store)
    store.close()


def seal(
    vault: Vault,
    resource: dict[str, Any] | None = None,
    *,
    record_id: str = "rec-1",
    version: int = 1,
    resource_type: str = "Patient",
) -> SealedRecord:
    return vault.seal(
        patient_resource(version) if resource is None else resource,
        record_id=record_id,
        resource_type=resource_type,
        version=version,
        patient="pat-7f3a",
        patient_key=PATIENT.public_key,
        custodian="hosp",
        custodian_key=CUSTODIAN.public_key,
    )


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def tamper(path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    """Edit the vault file behind the vault's back, as an attacker with file access would."""
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x80
    return bytes(out)


def expect(code: str, call: Callable[[], object]) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        call()
    assert caught.value.code == code
    assert not [s for s in PHI if s in str(caught.value)]
    return caught.value


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [PATIENT, CUSTODIAN], ids=["patient", "custodian"])
def test_round_trip_for_each_recipient(vault: Vault, reader: KeyPair) -> None:
    sealed = seal(vault)
    resource, record = vault.open("rec-1", 1, reader)
    assert resource == patient_resource()
    assert record == sealed == vault.store.get("rec-1", 1)
    assert set(record.recipients) == {PATIENT.public_b64, CUSTODIAN.public_b64}


def test_a_third_key_cannot_open(vault: Vault) -> None:
    seal(vault)
    expect("NOT_A_RECIPIENT", lambda: vault.open("rec-1", 1, STRANGER))


def test_versions_have_their_own_keys_and_latest_is_default(vault: Vault) -> None:
    first = seal(vault, version=1)
    second = seal(vault, version=2)
    assert first.nonce != second.nonce and first.salt != second.salt
    assert set(first.wrapped_keys.values()).isdisjoint(second.wrapped_keys.values())
    resource, record = vault.open("rec-1", None, PATIENT)
    assert record.version == 2 and resource["meta"] == {"versionId": "2"}
    assert vault.open("rec-1", 1, CUSTODIAN)[0] == patient_resource(1)


def test_content_hash_is_the_salted_hash_of_the_resource_as_received(vault: Vault) -> None:
    resource = patient_resource()
    sealed = seal(vault, resource)
    # What the caller anchors on the ledger: the RFC 8785 bytes of what it was given.
    expected = hmac.new(sealed.salt, canonical_bytes(resource), hashlib.sha256).hexdigest()
    assert sealed.content_hash == expected
    assert sealed.content_hash != hashlib.sha256(canonical_bytes(resource)).hexdigest()
    vault.open("rec-1", 1, PATIENT, expected_content_hash=expected)


def test_key_order_does_not_matter_but_content_does(path: Path) -> None:
    def fixed_rng(size: int) -> bytes:
        return bytes([7]) * size

    vault = Vault(VaultStore(path), rng=fixed_rng, clock=lambda: "2030-01-01T00:00:00Z")
    resource = patient_resource()
    shuffled = dict(reversed(list(resource.items())))
    a = seal(vault, resource, record_id="a")
    b = seal(vault, shuffled, record_id="b")
    c = seal(vault, {**resource, "gender": "female"}, record_id="c")
    assert a.content_hash == b.content_hash != c.content_hash
    assert a.created == "2030-01-01T00:00:00Z"
    assert a.salt == bytes([7]) * 32 and a.nonce == bytes([7]) * 12
    vault.store.close()


def test_anchor_mismatch_is_tampering(vault: Vault) -> None:
    seal(vault)
    expect(
        "VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT, expected_content_hash="0" * 64)
    )


def test_unknown_record(vault: Vault) -> None:
    with pytest.raises(NotFound) as caught:
        vault.open("nope", None, PATIENT)
    assert caught.value.code == "UNKNOWN_RECORD"


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        ({"resourceType": "Observation"}, "RESOURCE_TYPE_MISMATCH"),
        ({"value": float("nan")}, "INVALID"),
        ({"value": 2**60}, "INVALID"),
        ({"bad\ud800": 1}, "INVALID"),
    ],
    ids=["type", "nan", "big-int", "lone-surrogate"],
)
def test_seal_refuses_bad_resources_and_stores_nothing(
    vault: Vault, resource: dict[str, Any], code: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        seal(vault, resource)
    assert caught.value.code == code
    with pytest.raises(NotFound):
        vault.store.get("rec-1")


@pytest.mark.parametrize(
    "change",
    [
        {"record_id": ""},
        {"version": 0},
        {"patient": ""},
        {"patient_key": None},
        {"custodian": ""},
        {"patient_key": b"\x00" * 32},
        {"custodian_key": b"short"},
    ],
    ids=repr,
)
def test_seal_refuses_bad_arguments(vault: Vault, change: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "record_id": "rec-1",
        "resource_type": "Patient",
        "version": 1,
        "patient": "pat-7f3a",
        "patient_key": PATIENT.public_key,
        "custodian": "hosp",
        "custodian_key": CUSTODIAN.public_key,
        **change,
    }
    with pytest.raises(ValidationError):
        vault.seal(patient_resource(), **args)


def test_an_organisations_own_record_is_sealed_for_the_custodian_alone(vault: Vault) -> None:
    org = {"resourceType": "Organization", "name": "Lakeside Hospital"}
    sealed = vault.seal(org, record_id="org-1", resource_type="Organization", version=1,
                        patient="", patient_key=None, custodian="hosp",
                        custodian_key=CUSTODIAN.public_key)  # fmt: skip
    assert list(sealed.wrapped_keys) == [CUSTODIAN.public_b64]
    resource, record = vault.open("org-1", 1, CUSTODIAN)
    assert resource == org and record.patient == ""
    expect("NOT_A_RECIPIENT", lambda: vault.open("org-1", 1, PATIENT))


def test_seal_refuses_a_non_object(vault: Vault) -> None:
    with pytest.raises(ValidationError):
        seal(vault, ["not", "an", "object"])  # type: ignore[arg-type]


def test_rng_output_is_checked(path: Path) -> None:
    vault = Vault(VaultStore(path), rng=lambda n: b"\x00" * (n - 1))
    with pytest.raises(ValidationError):
        seal(vault)
    vault.store.close()


# -- tampering behind the vault's back ------------------------------------------------------


def test_flipped_ciphertext_byte(vault: Vault, path: Path) -> None:
    sealed = seal(vault)
    for index in (0, len(sealed.ciphertext) // 2, len(sealed.ciphertext) - 1):
        tamper(path, "UPDATE records SET ciphertext = ?", (flip(sealed.ciphertext, index),))
        expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT))


def test_changed_nonce(vault: Vault, path: Path) -> None:
    sealed = seal(vault)
    tamper(path, "UPDATE records SET nonce = ?", (flip(sealed.nonce, 5),))
    expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, CUSTODIAN))


def test_changed_content_hash(vault: Vault, path: Path) -> None:
    sealed = seal(vault)
    forged = ("0" if sealed.content_hash[0] != "0" else "1") + sealed.content_hash[1:]
    tamper(path, "UPDATE records SET content_hash = ?", (forged,))
    expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT))


@pytest.mark.parametrize(
    "salt", [b"\x00" * 32, b"\x00" * 31, b""], ids=["same-size", "short", "empty"]
)
def test_changed_salt(vault: Vault, path: Path, salt: bytes) -> None:
    seal(vault)
    tamper(path, "UPDATE records SET salt = ?", (salt,))
    expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT))


def test_wrapped_key_swapped_for_another_records(vault: Vault, path: Path) -> None:
    seal(vault, record_id="rec-1")
    other = seal(vault, record_id="rec-2")
    tamper(
        path,
        "UPDATE wrapped_keys SET wrapped = ? WHERE record_id = 'rec-1' AND recipient = ?",
        (other.wrapped_keys[PATIENT.public_b64], PATIENT.public_b64),
    )
    expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT))
    assert vault.open("rec-1", 1, CUSTODIAN)[0] == patient_resource()  # the other wrap is intact


def test_wrapped_key_swapped_for_the_other_recipients(vault: Vault, path: Path) -> None:
    sealed = seal(vault)
    tamper(
        path,
        "UPDATE wrapped_keys SET wrapped = ? WHERE recipient = ?",
        (sealed.wrapped_keys[CUSTODIAN.public_b64], PATIENT.public_b64),
    )
    expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT))


def test_deleted_wrapped_key_means_not_a_recipient(vault: Vault, path: Path) -> None:
    seal(vault)
    tamper(path, "DELETE FROM wrapped_keys WHERE recipient = ?", (PATIENT.public_b64,))
    expect("NOT_A_RECIPIENT", lambda: vault.open("rec-1", 1, PATIENT))


def test_a_strangers_key_added_by_an_attacker_still_fails_the_anchor(
    vault: Vault, path: Path
) -> None:
    """Sealed boxes are anonymous: a forger can re-seal a whole record, only the anchor catches it."""
    genuine = seal(vault, record_id="real")
    forger = Vault(VaultStore(path.with_name("forged.db")))
    forged = forger.seal(
        {**patient_resource(), "gender": "female"},
        record_id="real",
        resource_type="Patient",
        version=1,
        patient="pat-7f3a",
        patient_key=PATIENT.public_key,
        custodian="hosp",
        custodian_key=CUSTODIAN.public_key,
    )
    forger.store.close()
    tamper(
        path,
        "UPDATE records SET nonce = ?, ciphertext = ?, salt = ?, content_hash = ?",
        (forged.nonce, forged.ciphertext, forged.salt, forged.content_hash),
    )
    tamper(
        path,
        "UPDATE wrapped_keys SET wrapped = ? WHERE recipient = ?",
        (forged.wrapped_keys[PATIENT.public_b64], PATIENT.public_b64),
    )
    resource, _ = vault.open("real", 1, PATIENT)  # internally consistent...
    assert resource["gender"] == "female"
    expect(
        "VAULT_TAMPERED",  # ...but not what the ledger anchored
        lambda: vault.open("real", 1, PATIENT, expected_content_hash=genuine.content_hash),
    )


def test_record_moved_to_another_id_or_version(vault: Vault, path: Path) -> None:
    """Copying a whole sealed row (ciphertext, nonce, salt, hash, keys) elsewhere fails the AAD."""
    seal(vault, record_id="rec-1", version=1)
    seal(vault, record_id="rec-1", version=2)
    seal(vault, record_id="rec-2", version=1)
    copy_row = (
        "UPDATE records SET (nonce, ciphertext, salt, content_hash) = (SELECT nonce, ciphertext,"
        " salt, content_hash FROM records WHERE record_id = ? AND version = ?)"
        " WHERE record_id = ? AND version = ?"
    )
    copy_keys = (
        "UPDATE wrapped_keys SET wrapped = (SELECT w.wrapped FROM wrapped_keys w WHERE"
        " w.record_id = ? AND w.version = ? AND w.recipient = wrapped_keys.recipient)"
        " WHERE record_id = ? AND version = ?"
    )
    for target in [("rec-2", 1), ("rec-1", 2)]:
        tamper(path, copy_row, ("rec-1", 1, *target))
        tamper(path, copy_keys, ("rec-1", 1, *target))
        expect("VAULT_TAMPERED", lambda t=target: vault.open(t[0], t[1], PATIENT))  # type: ignore[misc]
    assert vault.open("rec-1", 1, PATIENT)[0] == patient_resource(1)


def test_changed_resource_type_column(vault: Vault, path: Path) -> None:
    seal(vault)
    tamper(path, "UPDATE records SET resource_type = 'Observation'")
    expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT))


# -- PHI at rest ----------------------------------------------------------------------------


def test_no_phi_anywhere_in_the_vault_files(path: Path) -> None:
    store = VaultStore(path)
    vault = Vault(store)
    records = [seal(vault, version=v) for v in (1, 2)]
    lowered = [s.lower().encode() for s in PHI]
    encodings = [s.encode(enc) for s in PHI for enc in ("utf-8", "utf-16-le")]
    data = file_bytes(path)  # while open: the database and its WAL
    assert (path.parent / (path.name + "-wal")).stat().st_size > 0
    assert not [s for s in encodings if s in data]
    assert not [s for s in lowered if s in data.lower()]
    for record in records:
        assert not [s for s in PHI if s in repr(record)]
    assert store.checkpoint()
    store.close()
    data = file_bytes(path)
    assert not [s for s in encodings if s in data]
    assert not [s for s in lowered if s in data.lower()]
    assert b"Patient" in data and b"pat-7f3a" in data  # the scan does see what is stored clear


# -- shredding ------------------------------------------------------------------------------


def test_shred_destroys_every_version(path: Path) -> None:
    store = VaultStore(path)
    vault = Vault(store)
    doomed = [seal(vault, version=v) for v in (1, 2, 3)]
    kept = seal(vault, record_id="kept")
    assert store.shred("rec-1") == [1, 2, 3]
    for version in (None, 1, 2, 3):
        for reader in (PATIENT, CUSTODIAN):
            with pytest.raises(NotFound) as caught:
                vault.open("rec-1", version, reader)
            assert caught.value.code == "RECORD_SHREDDED"
    assert store.versions("rec-1") == [1, 2, 3]
    assert store.for_patient("pat-7f3a") == [("kept", 1, "Patient")]
    assert vault.open("kept", 1, CUSTODIAN)[0] == patient_resource()

    gone = [b for r in doomed for b in (r.salt, r.nonce, r.ciphertext, *r.wrapped_keys.values())]
    data = file_bytes(path)
    assert not [b for b in gone if b in data]
    store.close()
    data = file_bytes(path)
    assert not [b for b in gone if b in data]
    assert kept.salt in data and all(w in data for w in kept.wrapped_keys.values())


def test_large_integral_floats_come_back_as_the_same_doubles(vault: Vault) -> None:
    """JCS writes 6.933401523958962e16 as 69334015239589620: open must read a double back."""
    resource = {
        "resourceType": "Basic",
        "f": 6.933401523958962e16,
        "g": [2.0**53, -1e20],
        "max": 2**53 - 1,
        "digits": "12345678901234567890",
        "small": 1.0,
    }
    seal(vault, resource, resource_type="Basic")
    opened, _ = vault.open("rec-1", 1, PATIENT)
    assert opened == resource
    assert type(opened["f"]) is float and opened["g"] == [2.0**53, -1e20]
    assert type(opened["max"]) is int and opened["digits"] == "12345678901234567890"
    assert canonical_bytes(opened) == canonical_bytes(resource)


# -- property -------------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_ids = itertools.count()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(obj=st.dictionaries(_text, _json, max_size=6), reader_is_patient=st.booleans())
def test_round_trip_of_random_json_objects(
    vault: Vault, obj: dict[str, Any], reader_is_patient: bool
) -> None:
    resource = {**obj, "resourceType": "Basic"}
    record_id = f"prop-{next(_ids)}"
    sealed = seal(vault, resource, record_id=record_id, resource_type="Basic")
    opened, record = vault.open(record_id, 1, PATIENT if reader_is_patient else CUSTODIAN)
    assert opened == resource
    assert canonical_bytes(opened) == canonical_bytes(resource)
    assert record.content_hash == sealed.content_hash
