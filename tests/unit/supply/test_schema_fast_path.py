"""The jsonschema-rs fast path gives the reference validator's verdict, document for document.

A document the fast validator accepts skips the reference (jsonschema) validator, so the two
must agree on validity: on every corpus document and event, and on mutations of them.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careledger.supply import epcis_validate as ev
from tests.support.vectors import load_json, vector_path

CAPTURE = ("openepcis", "Capture")
FILES = [
    (folder, p.name)
    for folder in ("Documents", "Events", "Invalid")
    for p in sorted(vector_path(*CAPTURE, folder).glob("*.json"))
]


def reference_valid(doc: object) -> bool:
    return not any(True for _ in ev._validator().iter_errors(doc))


@pytest.mark.parametrize(("folder", "name"), FILES)
def test_fast_verdict_equals_reference_on_the_corpus(folder: str, name: str) -> None:
    doc = load_json(*CAPTURE, folder, name)
    assert ev.schema_valid(doc) == reference_valid(doc)


def test_the_corpus_has_both_verdicts() -> None:
    verdicts = {ev.schema_valid(load_json(*CAPTURE, f, n)) for f, n in FILES}
    assert verdicts == {True, False}


_DOCS = [load_json(*CAPTURE, "Documents", n) for f, n in FILES if f == "Documents"]
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from(
        [
            "",
            "ADD",
            "OBSERVE",
            "2005-04-03T20:33:31.116-06:00",
            "2005-04-03 20:33:31",
            "2005-13-03T20:33:31Z",
            "urn:epc:id:sgtin:0614141.107346.2017",
            "+02:00",
            "-25:00",
            "ObjectEvent",
            "bogus",
        ]
    ),
    st.lists(st.text(max_size=3), max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_verdict_equals_reference_on_mutations(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(_DOCS)))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_values)
        if not _paths(doc):
            break
    assert ev.schema_valid(doc) == reference_valid(doc)
