"""transparency-dev/merkle vectors (Apache-2.0): Go's verdicts on good and forged proofs.

Every vector file is one case. Verdicts must agree with ``wantErr`` except where we are stricter
on purpose (STRICTER_THAN_GO, each with its reason). Proofs we generate for the reference tree
must equal the vectors' proofs byte for byte.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pytest

from careledger.core.merkle import (
    GetNodes,
    NodeId,
    append_leaf_hashes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_at,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from careledger.errors import VerificationError
from tests.support.vectors import load_json, vector_path

SET = "transparency-dev-merkle"
TESTDATA = vector_path(SET, "testdata")
INCLUSION = sorted(p.relative_to(TESTDATA).as_posix() for p in TESTDATA.glob("inclusion/**/*.json"))
CONSISTENCY = sorted(
    p.relative_to(TESTDATA).as_posix() for p in TESTDATA.glob("consistency/**/*.json")
)

# Go compares the roots of equal sizes without checking their length, so 12-byte placeholder
# "roots" pass there. Every verify_* here refuses a hash that is not 32 bytes: nowhere else
# would such a value verify, and a caller holding one has a corrupt checkpoint.
STRICTER_THAN_GO = {
    "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": "12-byte roots",
}


def b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def vector(name: str) -> dict[str, Any]:
    case: dict[str, Any] = load_json(SET, "testdata", *name.split("/"))
    case["proof"] = [b64(p) for p in case["proof"] or []]  # Go writes an empty proof as null
    return case


def expect_error(name: str, case: dict[str, Any]) -> bool:
    return bool(case["wantErr"]) or name in STRICTER_THAN_GO


def test_the_vector_set_is_complete() -> None:
    assert len(INCLUSION) == 98
    assert len(CONSISTENCY) == 98
    valid = [n for n in INCLUSION + CONSISTENCY if not vector(n)["wantErr"]]
    assert len(valid) == 12
    assert set(STRICTER_THAN_GO) <= set(valid)


@pytest.mark.parametrize("name", INCLUSION)
def test_inclusion_vector(name: str) -> None:
    case = vector(name)
    args = (b64(case["leafHash"]), case["leafIdx"], case["treeSize"], case["proof"])
    root = b64(case["root"])
    if expect_error(name, case):
        with pytest.raises(VerificationError):
            verify_inclusion(*args, root)
    else:
        verify_inclusion(*args, root)
        assert root_from_inclusion_proof(*args) == root


@pytest.mark.parametrize("name", CONSISTENCY)
def test_consistency_vector(name: str) -> None:
    case = vector(name)
    args = (case["size1"], case["size2"], b64(case["root1"]), b64(case["root2"]), case["proof"])
    if expect_error(name, case):
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- the reference tree behind the proofs ------------------------------------------------------


REFERENCE = load_json(SET, "rfc6962-reference-tree.json")
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in REFERENCE["leafInputsHex"]]
ROOTS = {int(n): bytes.fromhex(h) for n, h in REFERENCE["rootHashesHexBySize"].items()}


def reference_store() -> tuple[dict[NodeId, bytes], GetNodes]:
    _, completed = append_leaf_hashes([], 0, LEAVES)
    nodes = dict(completed)

    def get_nodes(ids: Sequence[NodeId]) -> list[bytes]:
        return [nodes[i] for i in ids]

    return nodes, get_nodes


def test_reference_tree_roots_and_nodes() -> None:
    nodes, get_nodes = reference_store()
    assert sorted(ROOTS) == list(range(len(LEAVES) + 1))
    for n, root in ROOTS.items():
        assert root_from_leaf_hashes(LEAVES[:n]) == root
        assert root_at(n, get_nodes) == root
    expected = {
        (level, index): bytes.fromhex(h)
        for level, row in enumerate(REFERENCE["nodeHashesHexByLevel"])
        for index, h in enumerate(row)
    }
    assert nodes == expected


def test_our_proofs_for_the_reference_tree_verify_against_its_roots() -> None:
    _, get_nodes = reference_store()
    for n in range(1, len(LEAVES) + 1):
        for m in range(n):
            verify_inclusion(LEAVES[m], m, n, inclusion_proof(m, n, get_nodes), ROOTS[n])
        for m in range(1, n + 1):
            verify_consistency(m, n, ROOTS[m], ROOTS[n], consistency_proof(m, n, get_nodes))


def happy_paths(names: list[str]) -> list[str]:
    """The numbered directories' valid vectors: these are built over the reference tree."""
    return [n for n in names if n.split("/")[1].isdigit() and n.endswith("/happy-path.json")]


HAPPY_INCLUSION = happy_paths(INCLUSION)
HAPPY_CONSISTENCY = happy_paths(CONSISTENCY)


@pytest.mark.parametrize("name", HAPPY_INCLUSION)
def test_we_generate_the_vector_inclusion_proof(name: str) -> None:
    case = vector(name)
    index, size = case["leafIdx"], case["treeSize"]
    assert b64(case["leafHash"]) == LEAVES[index], "vector is over the reference tree"
    assert b64(case["root"]) == ROOTS[size]
    _, get_nodes = reference_store()
    assert inclusion_proof(index, size, get_nodes) == case["proof"]


@pytest.mark.parametrize("name", HAPPY_CONSISTENCY)
def test_we_generate_the_vector_consistency_proof(name: str) -> None:
    case = vector(name)
    first, second = case["size1"], case["size2"]
    assert b64(case["root1"]) == ROOTS[first], "vector is over the reference tree"
    assert b64(case["root2"]) == ROOTS[second]
    _, get_nodes = reference_store()
    assert consistency_proof(first, second, get_nodes) == case["proof"]
