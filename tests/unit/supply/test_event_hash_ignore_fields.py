"""Regression: upstream's non-standard ``ignoreFields`` list, honoured exactly as upstream HEAD.

Our hash once honoured any ``*:ignoreFields`` key at both levels and matched entries through
prefixes, so it disagreed with upstream, and capture hashed with the list while the ledger
hashed without it. The expected hashes below are upstream HEAD's (RalphTro/
epcis-event-hash-generator 5d2f1c3, run with pyld) on the same documents. Capture now refuses
any such document.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from careledger.errors import ValidationError
from careledger.supply.epcis_validate import refuse_ignore_fields
from careledger.supply.event_hash import document_event_hash_ids, event_hash_id, event_prehash
from tests.support.vectors import load_json, vector_path

CORPUS = "epcis-event-hash-generator"
TRANSCRIBED = "transcribed-from-xml"
RX = "https://repository-x.example.com/"

# Upstream HEAD's hashes of the first event of the base documents.
ALL_FIELDS = (
    "ni:///sha-256;81d42556b26127560fee1c57e0b7775cbd58aa401af0565e58ce043472ab3a5b?ver=CBV2.0"
)
BOTH_IGNORED = (
    "ni:///sha-256;b3d481c5590757ab8361a6cb0e924820feb3b61eb568e7d7703f21a96f76f51d?ver=CBV2.0"
)
HASH_KEPT = (
    "ni:///sha-256;6116927d8a9cc0ef86e0c50d635ea8c1ab61fb95a3ec15e81850c1d9dea863e6?ver=CBV2.0"
)
CAPTURE_ID_KEPT = (
    "ni:///sha-256;9a335c1adcc6ee0093fe8028f797ef9997c0331a4e4069b89f87272fe3fe15c2?ver=CBV2.0"
)


def _base() -> dict[str, Any]:
    """The upstream vector's document, first event only (it ignores two fields)."""
    doc: dict[str, Any] = load_json(
        CORPUS, "examples", "epcisDocHavingEventWithIgnoreFields.jsonld"
    )
    doc["epcisBody"]["eventList"] = doc["epcisBody"]["eventList"][:1]
    return doc


def _query() -> dict[str, Any]:
    doc: dict[str, Any] = load_json(
        CORPUS, "examples", "epcisQueryDocHavingEventWithIgnoreFields.jsonld"
    )
    results = doc["epcisBody"]["queryResults"]
    results["resultsBody"]["eventList"] = results["resultsBody"]["eventList"][:1]
    return doc


def case_c() -> dict[str, Any]:  # the key under a prefix bound to another IRI
    doc = _base()
    doc["@context"][1]["acme"] = "https://acme.example/"
    doc["acme:ignoreFields"] = doc.pop("repository-x:ignoreFields")
    return doc


def case_d() -> dict[str, Any]:  # no prefix at all
    doc = _base()
    doc["ignoreFields"] = doc.pop("repository-x:ignoreFields")
    return doc


def case_s() -> dict[str, Any]:  # repository-x bound without the trailing slash
    doc = _base()
    doc["@context"][1]["repository-x"] = RX.rstrip("/")
    return doc


def case_e() -> dict[str, Any]:  # a query document's list at document level
    doc = _query()
    doc["repository-x:ignoreFields"] = doc["epcisBody"]["queryResults"].pop(
        "repository-x:ignoreFields"
    )
    return doc


def case_e2() -> dict[str, Any]:  # a query document with a list at both levels
    doc = _query()
    doc["repository-x:ignoreFields"] = ["repository-x:hash"]
    doc["epcisBody"]["queryResults"]["repository-x:ignoreFields"] = ["example:captureID"]
    return doc


def case_g() -> dict[str, Any]:  # an entry under another prefix bound to the same IRI
    doc = _base()
    doc["@context"][1]["ex2"] = "https://ns.example.com/epcis/"
    doc["repository-x:ignoreFields"] = ["repository-x:hash", "ex2:captureID"]
    return doc


def case_h() -> dict[str, Any]:  # an entry in Clark notation
    doc = _base()
    doc["repository-x:ignoreFields"] = [
        "repository-x:hash",
        "{https://ns.example.com/epcis/}captureID",
    ]
    return doc


def case_k() -> dict[str, Any]:  # "type" in the list: read before fields are dropped
    doc = _base()
    doc["repository-x:ignoreFields"] = ["repository-x:hash", "example:captureID", "type"]
    return doc


def case_l() -> dict[str, Any]:  # bare words expanded before the ignored bizStep is dropped
    doc = _base()
    doc["repository-x:ignoreFields"] = ["repository-x:hash", "example:captureID", "bizStep"]
    doc["epcisBody"]["eventList"][0]["example:step"] = "inspecting"
    return doc


UPSTREAM: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "C": (case_c, ALL_FIELDS),
    "D": (case_d, ALL_FIELDS),
    "S": (case_s, "ni:///sha-256;5a9d4e34225968b011011922ff2621393eec724887d65fe1189ae7d63f2a3d1c?ver=CBV2.0"),
    "E": (case_e, ALL_FIELDS),
    "E2": (case_e2, CAPTURE_ID_KEPT),
    "G": (case_g, HASH_KEPT),
    "H": (case_h, HASH_KEPT),
    "K": (case_k, BOTH_IGNORED),
    "L": (case_l, "ni:///sha-256;fd48f13031f9dccb2efbe2f6da18224eea3f4b24f69cfb6598a21145865cb819?ver=CBV2.0"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(UPSTREAM))
def test_ignore_fields_are_honoured_as_upstream_head_does(case: str) -> None:
    build, expected = UPSTREAM[case]
    document = build()
    before = copy.deepcopy(document)
    assert document_event_hash_ids(document) == [expected]
    assert document == before


def test_the_base_vectors_still_ignore_both_fields() -> None:
    assert document_event_hash_ids(_base()) == [BOTH_IGNORED]
    assert document_event_hash_ids(_query()) == [BOTH_IGNORED]


def test_bare_words_are_expanded_before_fields_are_dropped() -> None:
    document = case_l()
    event = document["epcisBody"]["eventList"][0]
    ignored = document["repository-x:ignoreFields"]
    prehash = event_prehash(event, document["@context"], ignore_fields=ignored)
    assert "bizStep=" not in prehash
    assert prehash.endswith(
        "{https://ns.example.com/epcis/}step=https://ref.gs1.org/cbv/BizStep-inspecting"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ALL_FIELDS),  # as absent
        ([], ALL_FIELDS),
        (["repository-x:hash", 5, "example:captureID"], BOTH_IGNORED),  # non-strings match nothing
    ],
)
def test_ignore_fields_values(value: Any, expected: str) -> None:
    document = _base()
    document["repository-x:ignoreFields"] = value
    assert document_event_hash_ids(document) == [expected]


@pytest.mark.parametrize("value", ["example:captureID", {"example:captureID": True}, 3])
def test_an_ignore_fields_member_that_is_not_a_list_is_malformed(value: Any) -> None:
    document = _base()
    document["repository-x:ignoreFields"] = value  # upstream fails with a TypeError
    with pytest.raises(ValidationError) as info:
        document_event_hash_ids(document)
    assert info.value.code == "MALFORMED_EPCIS"


def test_the_first_prefix_bound_to_repository_x_names_the_key() -> None:
    document = _base()
    example = "https://ns.example.com/epcis/"
    document["@context"][1:2] = [{"a": RX}, {"repository-x": RX, "example": example}]
    assert document_event_hash_ids(document) == [ALL_FIELDS]  # "repository-x:" is not "a:"
    document["a:ignoreFields"] = document.pop("repository-x:ignoreFields")
    assert document_event_hash_ids(document) == [BOTH_IGNORED]


def test_without_a_repository_x_prefix_the_key_is_a_bare_colon() -> None:
    document = _base()
    document["@context"][1] = {"example": "https://ns.example.com/epcis/"}
    document[":ignoreFields"] = document.pop("repository-x:ignoreFields")
    assert document_event_hash_ids(document) == [BOTH_IGNORED]  # as upstream


# --- the upstream XML vectors, transcribed as JSON-LD ----------------------------------------


def _transcribed(name: str, suffix: str) -> list[str]:
    text = vector_path(CORPUS, TRANSCRIBED, name + suffix).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


XML_VECTORS = {
    "epcisXmlDocHavingEventWithIgnoreFields": [
        "ni:///sha-256;2e3080ec5bfad98586d73f1943fae80e201613c1b2c0f084b3b8cd5976aaea5c?ver=CBV2.0",
        "ni:///sha-256;bfcf5b87dd396d4f7b266e33d4a969dc5250344ed0e47e85ce8e26d1adadad11?ver=CBV2.0",
    ],
    "epcisXmlQueryDocHavingEventWithIgnoreFields": [
        "ni:///sha-256;573a43267f95d2ddbe7e7487ad3ffb89e78ee8c72a296b868d9e5baeb8baef34?ver=CBV2.0",
        "ni:///sha-256;1e6c7bbfc2d3f744e99af09ad8216505b72f0ced383e391f92ab92674dc906c4?ver=CBV2.0",
    ],
}


@pytest.mark.parametrize("name", sorted(XML_VECTORS))
def test_transcribed_xml_vectors(name: str) -> None:
    document = load_json(CORPUS, TRANSCRIBED, name + ".jsonld")
    assert _transcribed(name, ".hashes") == XML_VECTORS[name]  # the copied upstream file
    assert document_event_hash_ids(document) == XML_VECTORS[name]
    body = document["epcisBody"]
    holder = body.get("queryResults", document)
    events = holder["resultsBody"]["eventList"] if "queryResults" in body else body["eventList"]
    ignored = holder["repository-x:ignoreFields"]
    prehashes = [event_prehash(e, document["@context"], ignore_fields=ignored) for e in events]
    assert prehashes == _transcribed(name, ".prehashes")


# --- what the node and the ledger do with such documents --------------------------------------

REFUSED = [case() for case, _ in UPSTREAM.values()] + [
    _base(),
    _query(),
    {"type": "ObjectEvent", "x:ignoreFields": []},  # a bare event: its own top level
    *(load_json(CORPUS, TRANSCRIBED, name + ".jsonld") for name in sorted(XML_VECTORS)),
]


@pytest.mark.parametrize("document", REFUSED)
def test_capture_refuses_every_ignore_fields_member(document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        refuse_ignore_fields(document)
    assert info.value.code == "IGNORE_FIELDS_UNSUPPORTED"
    assert info.value.http_status == 400
    assert "ignoreFields" in info.value.message and "re-hashes" in info.value.message


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"epcisBody": "x"},
        {"epcisBody": {"queryResults": []}},
        {"ignorefields": [], "IgnoreFields": [], "ignoreFields:x": []},
        {"epcisBody": {"eventList": [{"type": "ObjectEvent", "example:ignoreFields": []}]}},
    ],
)
def test_capture_lets_other_documents_through(document: Any) -> None:
    refuse_ignore_fields(document)  # an event's own extension named so is hashed, not obeyed


@pytest.mark.parametrize("name", ["epcisDocHavingEventWithIgnoreFields", *sorted(XML_VECTORS)])
def test_the_ledgers_document_shape_hashes_every_field(name: str) -> None:
    """contracts/supply.py (r3 on) hashes ``{"@context", "epcisBody": {"eventList"}}``: it holds
    no ignoreFields member, so every field counts, whatever the submitted document said."""
    folder = "examples" if name.startswith("epcisDoc") else TRANSCRIBED
    submitted = load_json(CORPUS, folder, name + ".jsonld")
    body = submitted["epcisBody"]
    events = (
        body["queryResults"]["resultsBody"]["eventList"]
        if "queryResults" in body
        else body["eventList"]
    )
    ledger = {"@context": submitted["@context"], "epcisBody": {"eventList": events}}
    full = [event_hash_id(e, submitted["@context"]) for e in events]
    assert document_event_hash_ids(ledger) == full
    assert document_event_hash_ids(submitted) != full
