"""Opened versions kept in memory (issue 20): served only for the very row that was opened, so
every tampering, shredding or anchor mismatch the vault refused before is still refused after
a version was opened once; bounded by bytes; a fresh resource for every caller."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from careledger.errors import NotFound
from careledger.vault import Vault
from careledger.vault.opened import ENTRY_OVERHEAD, OpenedVersions, fingerprint
from tests.unit.vault.test_service import (
    CUSTODIAN,
    PATIENT,
    expect,
    flip,
    patient_resource,
    seal,
    tamper,
)

# the vault's own test fixtures: a vault over a real SQLite file
from tests.unit.vault.test_service import path as path
from tests.unit.vault.test_service import vault as vault

TAMPERINGS: dict[str, Callable[[Path, object], None]] = {
    "ciphertext": lambda path, s: tamper(
        path,
        "UPDATE records SET ciphertext = ?",
        (flip(s.ciphertext, 3),),  # type: ignore[attr-defined]
    ),
    "nonce": lambda path, s: tamper(
        path,
        "UPDATE records SET nonce = ?",
        (flip(s.nonce, 5),),  # type: ignore[attr-defined]
    ),
    "content hash": lambda path, s: tamper(
        path, "UPDATE records SET content_hash = ?", ("0" * 64,)
    ),
    "salt": lambda path, s: tamper(path, "UPDATE records SET salt = ?", (b"\x00" * 32,)),
    "wrapped key": lambda path, s: tamper(
        path,
        "UPDATE wrapped_keys SET wrapped = ? WHERE recipient = ?",
        (flip(s.wrapped_keys[PATIENT.public_b64], 40), PATIENT.public_b64),  # type: ignore[attr-defined]
    ),
    "type": lambda path, s: tamper(path, "UPDATE records SET resource_type = 'Observation'"),
}


def test_a_second_open_is_served_from_memory_as_a_fresh_copy(vault: Vault) -> None:
    seal(vault)
    first, _ = vault.open("rec-1", 1, PATIENT)
    assert (vault.opened.hits, len(vault.opened)) == (0, 1)
    first["name"] = "altered by a caller"
    second, record = vault.open("rec-1", 1, PATIENT)
    assert vault.opened.hits == 1
    assert second == patient_resource() and record.version == 1
    third, _ = vault.open("rec-1", None, PATIENT)  # the latest: the same version
    assert third == patient_resource() and vault.opened.hits == 2
    vault.open("rec-1", 1, CUSTODIAN)  # another reader: its own wrapped key, its own entry
    assert vault.opened.hits == 2 and len(vault.opened) == 2


@pytest.mark.parametrize("what", sorted(TAMPERINGS))
def test_tampering_after_a_version_was_opened_is_still_refused(
    vault: Vault, path: Path, what: str
) -> None:
    sealed = seal(vault)
    assert vault.open("rec-1", 1, PATIENT)[0] == patient_resource()
    TAMPERINGS[what](path, sealed)
    expect("VAULT_TAMPERED", lambda: vault.open("rec-1", 1, PATIENT))


def test_an_anchor_mismatch_after_a_version_was_opened_is_still_refused(vault: Vault) -> None:
    sealed = seal(vault)
    vault.open("rec-1", 1, PATIENT, expected_content_hash=sealed.content_hash)
    expect(
        "VAULT_TAMPERED",
        lambda: vault.open("rec-1", 1, PATIENT, expected_content_hash="0" * 64),
    )
    assert vault.open("rec-1", 1, PATIENT, expected_content_hash=sealed.content_hash)[0] == (
        patient_resource()
    )


def test_a_shredded_record_is_refused_though_it_was_opened(vault: Vault) -> None:
    seal(vault)
    vault.open("rec-1", 1, PATIENT)
    vault.store.shred("rec-1")
    with pytest.raises(NotFound) as caught:
        vault.open("rec-1", 1, PATIENT)
    assert caught.value.code == "RECORD_SHREDDED"
    vault.opened.drop("rec-1")  # what the node's commit listener does: out of memory too
    assert len(vault.opened) == 0 and vault.opened.held_bytes == 0


def test_bounded_by_bytes_least_recently_used_first_out() -> None:
    size = len(b'{"n":0}') + ENTRY_OVERHEAD
    cache = OpenedVersions(max_bytes=3 * size)
    row = fingerprint(b"row")
    for i in range(3):
        cache.put((f"r{i}", 1, "k"), row, {"n": i}, since=cache.generation())
    assert cache.held_bytes == 3 * size
    assert cache.get(("r0", 1, "k"), row) == {"n": 0}  # r0 used: r1 is the oldest now
    cache.put(("r3", 1, "k"), row, {"n": 3}, since=cache.generation())
    assert cache.get(("r1", 1, "k"), row) is None
    assert [cache.get((f"r{i}", 1, "k"), row) for i in (0, 2, 3)] == [{"n": 0}, {"n": 2}, {"n": 3}]
    big = {"n": "x" * 3 * size}  # larger than the whole cache: not kept
    cache.put(("big", 1, "k"), row, big, since=cache.generation())
    assert cache.get(("big", 1, "k"), row) is None and cache.held_bytes == 3 * size
    cache.put(("r0", 1, "k"), row, {"n": 0}, since=cache.generation())  # again: counted once
    assert cache.held_bytes == 3 * size and len(cache) == 3


def test_bounded_by_entries_however_small_they_are() -> None:
    """Tiny resources cost their bookkeeping more than their JSON: entries are capped too."""
    cache = OpenedVersions(max_entries=100)
    row = fingerprint(b"row")
    for i in range(1_000):
        cache.put((f"r{i}", 1, "k"), row, {}, since=cache.generation())
    assert len(cache) == 100 and cache.held_bytes == 100 * (2 + ENTRY_OVERHEAD)
    assert cache.get(("r899", 1, "k"), row) is None and cache.get(("r999", 1, "k"), row) == {}


def test_an_open_that_began_before_a_shredding_cannot_put_it_back() -> None:
    """A read that fetched the row before the shredding finishes after the drop: what it
    decrypted must not stay in memory (the review's M1)."""
    cache = OpenedVersions()
    row = fingerprint(b"row")
    since = cache.generation()  # the reader took its row
    cache.drop("r1")  # the shredding
    cache.put(("r1", 1, "k"), row, {"text": "secret"}, since=since)
    assert len(cache) == 0 and cache.get(("r1", 1, "k"), row) is None
    cache.put(("r1", 1, "k"), row, {"text": "later"}, since=cache.generation())
    assert cache.get(("r1", 1, "k"), row) == {"text": "later"}


def test_another_fingerprint_is_a_miss_and_drop_takes_every_version_and_reader() -> None:
    cache = OpenedVersions()
    cache.put(("r1", 1, "a"), fingerprint(b"one"), {"v": 1}, since=0)
    cache.put(("r1", 2, "b"), fingerprint(b"two"), {"v": 2}, since=0)
    cache.put(("r2", 1, "a"), fingerprint(b"one"), {"v": 3}, since=0)
    assert cache.get(("r1", 1, "a"), fingerprint(b"changed")) is None
    assert fingerprint(b"ab", b"c") != fingerprint(b"a", b"bc")  # length-prefixed parts
    cache.drop("r1")
    assert cache.get(("r1", 2, "b"), fingerprint(b"two")) is None
    assert cache.get(("r2", 1, "a"), fingerprint(b"one")) == {"v": 3} and len(cache) == 1
