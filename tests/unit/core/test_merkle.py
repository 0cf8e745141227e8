"""Merkle log: what the store-backed code produces must be RFC 9162's recursive definitions.

The reference below is §2.1 transcribed with plain hashlib and list slicing, deliberately
sharing nothing with the module under test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from functools import cache

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from careledger.core.merkle import (
    HASH_SIZE,
    GetNodes,
    NodeId,
    append_leaf_hashes,
    consistency_proof,
    empty_root,
    frontier_nodes,
    inclusion_proof,
    inclusion_proof_in,
    leaf_hash,
    node_hash,
    root_at,
    root_from_frontier,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from careledger.errors import StorageError, ValidationError, VerificationError

SMALL = 70  # exhaustive: every (index, size) and (m, n) up to here
BIG = 2000  # property tests draw sizes up to here
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def data(i: int) -> bytes:
    return i.to_bytes(8, "big")


# --- RFC 9162 §2.1, verbatim ---------------------------------------------------------------


def ref_k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(d: tuple[bytes, ...]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = ref_k(n)
    return hashlib.sha256(b"\x01" + ref_mth(d[0:k]) + ref_mth(d[k:n])).digest()


def ref_path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, d[0:k]), ref_mth(d[k:n])]
    return [*ref_path(m - k, d[k:n]), ref_mth(d[0:k])]


def ref_subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, d[0:k], b), ref_mth(d[k:n])]
    return [*ref_subproof(m - k, d[k:n], False), ref_mth(d[0:k])]


def ref_proof(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --- node stores ---------------------------------------------------------------------------


class MemoryStore:
    """The node table of a log: perfect subtrees only, each written once, never updated."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, bytes] = {}
        self.frontier: list[bytes] = []
        self.size = 0
        self.calls: list[list[NodeId]] = []

    def append(self, leaf_inputs: Sequence[bytes]) -> None:
        hashes = [leaf_hash(x) for x in leaf_inputs]
        self.frontier, completed = append_leaf_hashes(self.frontier, self.size, hashes)
        for node_id, h in completed:
            assert node_id not in self.nodes, f"{node_id} written twice"
            self.nodes[node_id] = h
        self.size += len(leaf_inputs)

    def reader(self, size: int) -> GetNodes:
        """The store as of ``size``: a proof for it must not read nodes completed later."""

        def get_nodes(ids: Sequence[NodeId]) -> list[bytes]:
            self.calls.append(list(ids))
            for level, index in ids:
                assert (index + 1) << level <= size, f"{(level, index)} is beyond size {size}"
            return [self.nodes[i] for i in ids]

        return get_nodes


def grown(n: int) -> MemoryStore:
    store = MemoryStore()
    store.append([data(i) for i in range(n)])
    return store


@cache
def big_log() -> tuple[MemoryStore, tuple[bytes, ...]]:
    """A log of BIG leaves appended one by one, with the root after every append."""
    store = MemoryStore()
    roots = [root_from_frontier(store.frontier)]
    for i in range(BIG):
        store.append([data(i)])
        roots.append(root_from_frontier(store.frontier))
    return store, tuple(roots)


PERIOD_LEVEL = 10


@cache
def lazy_node(level: int, index: int) -> bytes:
    """Any perfect node of a huge log whose leaf i holds data(i % 1024).

    The log repeats every 1024 leaves, so nodes are keyed by their position in the period (and
    every node at or above level 10 is the same): a 2**20 tree costs ~2000 hashes, yet siblings
    below level 10 all differ, which is where left/right mix-ups would show.
    """
    if level >= PERIOD_LEVEL:
        index = 0
    else:
        index %= 1 << (PERIOD_LEVEL - level)
    if level == 0:
        return leaf_hash(data(index))
    return node_hash(lazy_node(level - 1, 2 * index), lazy_node(level - 1, 2 * index + 1))


class CountingLazyStore:
    def __init__(self, size: int) -> None:
        self.size = size
        self.calls: list[list[NodeId]] = []

    def __call__(self, ids: Sequence[NodeId]) -> list[bytes]:
        self.calls.append(list(ids))
        for level, index in ids:
            assert (index + 1) << level <= self.size
        return [lazy_node(level, index) for level, index in ids]


# --- hashing primitives --------------------------------------------------------------------


def test_hashing_primitives_match_rfc_9162() -> None:
    assert empty_root() == hashlib.sha256(b"").digest()
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert root_from_leaf_hashes([]) == empty_root()
    for n in range(SMALL + 1):
        d = tuple(data(i) for i in range(n))
        assert root_from_leaf_hashes([leaf_hash(x) for x in d]) == ref_mth(d)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(a + b) != node_hash(a, b)


# --- append and frontier -------------------------------------------------------------------


def test_append_stores_exactly_the_perfect_nodes_and_the_frontier_gives_every_root() -> None:
    store = MemoryStore()
    assert root_from_frontier(store.frontier) == empty_root()
    for n in range(1, SMALL + 1):
        store.append([data(n - 1)])
        d = tuple(data(i) for i in range(n))
        assert root_from_frontier(store.frontier) == ref_mth(d)
        expected = {
            (level, index) for level in range(n.bit_length()) for index in range(n >> level)
        }
        assert set(store.nodes) == expected
        for (level, index), h in store.nodes.items():
            assert h == ref_mth(d[index << level : (index + 1) << level])


@pytest.mark.parametrize("chunks", [[5, 0, 1, 64], [1] * 70, [70], [3, 3, 3, 61], [32, 32, 6]])
def test_batched_appends_equal_one_by_one_appends(chunks: list[int]) -> None:
    batched = MemoryStore()
    for size in chunks:
        batched.append([data(batched.size + i) for i in range(size)])
    single = grown(sum(chunks))
    assert batched.nodes == single.nodes
    assert batched.frontier == single.frontier


def test_frontier_rebuilt_from_stored_nodes_equals_the_incremental_one() -> None:
    store = MemoryStore()
    for n in range(SMALL + 1):
        ids = frontier_nodes(n)
        assert len(ids) == n.bit_count()
        rebuilt = [store.nodes[i] for i in ids]
        assert rebuilt == store.frontier
        # A restarted writer continues from the rebuilt frontier exactly as before.
        nxt, _ = append_leaf_hashes(rebuilt, n, [leaf_hash(data(n))])
        store.append([data(n)])
        assert nxt == store.frontier


def test_frontier_nodes_of_huge_sizes() -> None:
    assert frontier_nodes(0) == []
    assert frontier_nodes(2**20) == [(20, 0)]
    assert frontier_nodes(6) == [(2, 0), (1, 2)]
    assert frontier_nodes(2**20 - 1) == [
        (19 - j, (2**20 - 2 ** (20 - j)) >> (19 - j)) for j in range(20)
    ]


# --- generation against the reference, exhaustively ----------------------------------------


def test_root_at_every_size_matches_mth() -> None:
    store = grown(SMALL)
    for n in range(SMALL + 1):
        d = tuple(data(i) for i in range(n))
        store.calls.clear()
        assert root_at(n, store.reader(n)) == ref_mth(d)
        assert len(store.calls) == (1 if n else 0)
        assert store.calls == [] or len(store.calls[0]) == n.bit_count()


def test_every_inclusion_proof_matches_path_and_verifies() -> None:
    store = grown(SMALL)
    for n in range(1, SMALL + 1):
        d = tuple(data(i) for i in range(n))
        root = ref_mth(d)
        for m in range(n):
            store.calls.clear()
            path = inclusion_proof(m, n, store.reader(n))
            assert path == ref_path(m, d), (m, n)
            assert len(store.calls) == (1 if path else 0)
            verify_inclusion(leaf_hash(d[m]), m, n, path, root)
            assert root_from_inclusion_proof(leaf_hash(d[m]), m, n, path) == root


def test_every_consistency_proof_matches_proof_and_verifies() -> None:
    store = grown(SMALL)
    for n in range(1, SMALL + 1):
        d = tuple(data(i) for i in range(n))
        for m in range(1, n + 1):
            store.calls.clear()
            proof = consistency_proof(m, n, store.reader(n))
            assert proof == ref_proof(m, d), (m, n)
            assert len(store.calls) == (1 if proof else 0)
            verify_consistency(m, n, ref_mth(d[:m]), ref_mth(d), proof)


# --- O(log n) reads, in one batch, up to 2**20 ---------------------------------------------


def read_bound(n: int) -> int:
    return 2 * math.ceil(math.log2(n)) + 2


HUGE_SIZES = [1, 2, 3, 1023, 1024, 1025, 2**19 + 1, 987_654, 2**20 - 1, 2**20]


def lazy_root(n: int) -> bytes:
    return root_at(n, CountingLazyStore(n))


def check_huge_inclusion(index: int, n: int) -> None:
    store = CountingLazyStore(n)
    path = inclusion_proof(index, n, store)
    assert len(store.calls) == (1 if path else 0)
    assert sum(map(len, store.calls)) <= read_bound(n), (index, n, store.calls)
    verify_inclusion(lazy_node(0, index), index, n, path, lazy_root(n))


def check_huge_consistency(m: int, n: int) -> None:
    store = CountingLazyStore(n)
    proof = consistency_proof(m, n, store)
    assert len(store.calls) == (1 if proof else 0)
    assert sum(map(len, store.calls)) <= read_bound(n), (m, n, store.calls)
    verify_consistency(m, n, lazy_root(m), lazy_root(n), proof)


@pytest.mark.parametrize("n", HUGE_SIZES)
def test_huge_trees_take_one_read_of_logarithmically_many_nodes(n: int) -> None:
    store = CountingLazyStore(n)
    root_at(n, store)
    assert [len(c) for c in store.calls] == [n.bit_count()]
    for index in {0, 1 % n, n // 2, n - 2 if n > 1 else 0, n - 1}:
        check_huge_inclusion(index, n)
    for m in {1, 2, n // 3 or 1, n // 2 or 1, n - 1 or 1, n}:
        if m <= n:
            check_huge_consistency(m, n)


@PROPERTY
@given(st.data())
def test_random_huge_proofs_take_one_read_of_logarithmically_many_nodes(
    draw: st.DataObject,
) -> None:
    n = draw.draw(st.integers(1, 2**20))
    check_huge_inclusion(draw.draw(st.integers(0, n - 1)), n)
    check_huge_consistency(draw.draw(st.integers(1, n)), n)


# --- properties: proofs verify, and any tampering is caught ---------------------------------


def flip(h: bytes, at: int, mask: int) -> bytes:
    out = bytearray(h)
    out[at % len(out)] ^= mask
    return bytes(out)


masks = st.integers(1, 255)


@st.composite
def index_and_size(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, BIG))
    return draw(st.integers(0, size - 1)), size


@st.composite
def first_and_second(draw: st.DrawFn) -> tuple[int, int]:
    second = draw(st.integers(1, BIG))
    return draw(st.integers(1, second)), second


@PROPERTY
@given(index_and_size())
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    index, size = case
    store, roots = big_log()
    path = inclusion_proof(index, size, store.reader(size))
    verify_inclusion(store.nodes[(0, index)], index, size, path, roots[size])


@PROPERTY
@given(first_and_second())
def test_every_consistency_proof_verifies(case: tuple[int, int]) -> None:
    first, second = case
    store, roots = big_log()
    proof = consistency_proof(first, second, store.reader(second))
    verify_consistency(first, second, roots[first], roots[second], proof)


INCLUSION_TAMPERING = [
    "flip-path-byte",
    "other-index",
    "other-size-with-its-root",
    "other-size-different-height",
    "drop-element",
    "insert-element",
    "resize-element",
    "wrong-root",
    "wrong-leaf",
]


@PROPERTY
@given(index_and_size(), st.sampled_from(INCLUSION_TAMPERING), st.data())
def test_tampered_inclusion_proofs_are_rejected(
    case: tuple[int, int], how: str, draw: st.DataObject
) -> None:
    index, size = case
    store, roots = big_log()
    path = inclusion_proof(index, size, store.reader(size))
    leaf, root = store.nodes[(0, index)], roots[size]
    if how in ("flip-path-byte", "drop-element", "resize-element"):
        assume(path)
        i = draw.draw(st.integers(0, len(path) - 1))
    if how == "flip-path-byte":
        path[i] = flip(path[i], draw.draw(st.integers(0, HASH_SIZE - 1)), draw.draw(masks))
    elif how == "other-index":
        index = draw.draw(st.integers(-1, size + 1).filter(lambda j: j != index))
    elif how == "other-size-with-its-root":
        # A root only means something together with its size (both come from a checkpoint),
        # so a changed size comes with the root of that size.
        size = draw.draw(st.integers(0, BIG).filter(lambda s: s != size))
        root = roots[size]
    elif how == "other-size-different-height":
        size = draw.draw(
            st.integers(index + 1, 2 * BIG).filter(lambda s: path_length(index, s) != len(path))
        )
    elif how == "drop-element":
        del path[i]
    elif how == "insert-element":
        i = draw.draw(st.integers(0, len(path)))
        path.insert(i, draw.draw(st.sampled_from([leaf, root, *path, bytes(HASH_SIZE)])))
    elif how == "resize-element":
        path[i] = draw.draw(st.sampled_from([path[i][:-1], path[i] + b"\x00", b""]))
    elif how == "wrong-root":
        root = draw.draw(
            st.one_of(
                st.integers(0, BIG).filter(lambda s: s != size).map(roots.__getitem__),
                st.builds(flip, st.just(root), st.integers(0, HASH_SIZE - 1), masks),
                st.sampled_from([leaf, root[:-1], b""]),
            ).filter(lambda r: r != root)
        )
    else:  # wrong-leaf
        leaf = draw.draw(
            st.one_of(
                st.integers(0, BIG - 1)
                .filter(lambda j: j != index)
                .map(lambda j: store.nodes[(0, j)]),
                st.builds(flip, st.just(leaf), st.integers(0, HASH_SIZE - 1), masks),
                st.just(leaf_hash(data(index))[:-1]),
            )
        )
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, path, root)


def path_length(m: int, n: int) -> int:
    """len(PATH(m, D[n])), following the same recursion without hashing anything."""
    length = 0
    while n > 1:
        k = ref_k(n)
        m, n = (m, k) if m < k else (m - k, n - k)
        length += 1
    return length


CONSISTENCY_TAMPERING = [
    "flip-path-byte",
    "other-first-with-its-root",
    "other-second-with-its-root",
    "drop-element",
    "insert-element",
    "resize-element",
    "wrong-first-root",
    "wrong-second-root",
    "swapped-roots",
]


@PROPERTY
@given(first_and_second(), st.sampled_from(CONSISTENCY_TAMPERING), st.data())
def test_tampered_consistency_proofs_are_rejected(
    case: tuple[int, int], how: str, draw: st.DataObject
) -> None:
    first, second = case
    store, roots = big_log()
    proof = consistency_proof(first, second, store.reader(second))
    first_root, second_root = roots[first], roots[second]
    if how in ("flip-path-byte", "drop-element", "resize-element"):
        assume(proof)
        i = draw.draw(st.integers(0, len(proof) - 1))
    if how == "flip-path-byte":
        proof[i] = flip(proof[i], draw.draw(st.integers(0, HASH_SIZE - 1)), draw.draw(masks))
    elif how == "other-first-with-its-root":
        first = draw.draw(st.integers(0, BIG).filter(lambda s: s != first))
        first_root = roots[first]
    elif how == "other-second-with-its-root":
        second = draw.draw(st.integers(0, BIG).filter(lambda s: s != second))
        second_root = roots[second]
    elif how == "drop-element":
        del proof[i]
    elif how == "insert-element":
        i = draw.draw(st.integers(0, len(proof)))
        extra = [first_root, second_root, *proof, bytes(HASH_SIZE)]
        proof.insert(i, draw.draw(st.sampled_from(extra)))
    elif how == "resize-element":
        proof[i] = draw.draw(st.sampled_from([proof[i][:-1], proof[i] + b"\x00", b""]))
    elif how == "wrong-first-root":
        first_root = draw.draw(
            st.one_of(
                st.integers(0, BIG).filter(lambda s: s != first).map(roots.__getitem__),
                st.builds(flip, st.just(first_root), st.integers(0, HASH_SIZE - 1), masks),
                st.just(first_root[:-1]),
            )
        )
    elif how == "wrong-second-root":
        second_root = draw.draw(
            st.one_of(
                st.integers(0, BIG).filter(lambda s: s != second).map(roots.__getitem__),
                st.builds(flip, st.just(second_root), st.integers(0, HASH_SIZE - 1), masks),
                st.just(second_root + b"\x00"),
            )
        )
    else:  # swapped-roots
        assume(first != second)
        first_root, second_root = second_root, first_root
    with pytest.raises(VerificationError):
        verify_consistency(first, second, first_root, second_root, proof)


# --- edges and argument errors -------------------------------------------------------------


def test_single_leaf_and_equal_sizes() -> None:
    store = grown(1)
    h = store.nodes[(0, 0)]
    assert inclusion_proof(0, 1, store.reader(1)) == []
    verify_inclusion(h, 0, 1, [], h)
    assert consistency_proof(1, 1, store.reader(1)) == []
    verify_consistency(1, 1, h, h, [])
    with pytest.raises(VerificationError):
        verify_consistency(1, 1, h, h, [h])


def test_nothing_is_consistent_with_the_empty_tree() -> None:
    # RFC 9162 defines consistency for 0 < first only; an empty tree commits to nothing.
    e = empty_root()
    with pytest.raises(VerificationError):
        verify_consistency(0, 0, e, e, [])
    with pytest.raises(VerificationError):
        verify_consistency(0, 1, e, leaf_hash(b""), [])


BAD_GENERATION: list[tuple[str, Callable[[GetNodes], object]]] = [
    ("index == size", lambda g: inclusion_proof(5, 5, g)),
    ("negative index", lambda g: inclusion_proof(-1, 5, g)),
    ("empty tree", lambda g: inclusion_proof(0, 0, g)),
    ("first == 0", lambda g: consistency_proof(0, 5, g)),
    ("first == second == 0", lambda g: consistency_proof(0, 0, g)),
    ("first > second", lambda g: consistency_proof(6, 5, g)),
    ("negative size", lambda g: root_at(-1, g)),
]


@pytest.mark.parametrize(("why", "call"), BAD_GENERATION, ids=[w for w, _ in BAD_GENERATION])
def test_impossible_requests_are_validation_errors(
    why: str, call: Callable[[GetNodes], object]
) -> None:
    store = grown(8)
    with pytest.raises(ValidationError):
        call(store.reader(8))
    assert store.calls == [], "arguments are checked before the store is read"


def test_bad_hashes_and_frontiers_are_validation_errors() -> None:
    h = leaf_hash(b"x")
    with pytest.raises(ValidationError):
        node_hash(h, h[:-1])
    with pytest.raises(ValidationError):
        root_from_leaf_hashes([h, b"short"])
    with pytest.raises(ValidationError):
        root_from_frontier([h + b"\x00"])
    with pytest.raises(ValidationError):
        frontier_nodes(-1)
    with pytest.raises(ValidationError):
        append_leaf_hashes([h], 3, [h])  # size 3 = 2 + 1 has a two-hash frontier
    with pytest.raises(ValidationError):
        append_leaf_hashes([h, h], 4, [h])
    with pytest.raises(ValidationError):
        append_leaf_hashes([], 0, [b""])
    with pytest.raises(ValidationError):
        append_leaf_hashes([], -1, [])


def test_a_misbehaving_store_is_a_storage_error() -> None:
    store = grown(8)

    def short(ids: Sequence[NodeId]) -> list[bytes]:
        return [store.nodes[i] for i in ids][:-1]

    def truncated(ids: Sequence[NodeId]) -> list[bytes]:
        return [store.nodes[i][:-1] for i in ids]

    for bad in (short, truncated):
        with pytest.raises(StorageError):
            inclusion_proof(2, 7, bad)


def test_malformed_verification_inputs_are_verification_errors() -> None:
    store = grown(8)
    path = inclusion_proof(3, 8, store.reader(8))
    leaf, root = store.nodes[(0, 3)], root_at(8, store.reader(8))
    verify_inclusion(leaf, 3, 8, path, root)
    for args in [
        (leaf, 3, 0, path, root),
        (leaf, -1, 8, path, root),
        (leaf, 8, 8, path, root),
        (leaf[:-1], 3, 8, path, root),
        (leaf, 3, 8, path, root + b"\x00"),
        (leaf, 3, 8, [*path[:-1], path[-1][:-1]], root),
    ]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    first_root = root_at(3, store.reader(3))
    proof = consistency_proof(3, 8, store.reader(8))
    verify_consistency(3, 8, first_root, root, proof)
    for cargs in [
        (8, 3, first_root, root, proof),
        (-3, 8, first_root, root, proof),
        (3, 8, first_root[:-1], root, proof),
        (3, 8, first_root, root, [*proof, b""]),
    ]:
        with pytest.raises(VerificationError):
            verify_consistency(*cargs)


def test_bytes_cannot_slide_between_siblings() -> None:
    # Without hash-length checks, H(0x01 || a || b) can be re-split as a' || b' and "verify".
    h0, h1 = leaf_hash(data(0)), leaf_hash(data(1))
    root2 = node_hash(h0, h1)
    verify_inclusion(h0, 0, 2, [h1], root2)
    with pytest.raises(VerificationError):
        verify_inclusion(h0 + h1[:5], 0, 2, [h1[5:]], root2)
    verify_consistency(1, 2, h0, root2, [h1])
    with pytest.raises(VerificationError):
        verify_consistency(1, 2, h0 + h1[:5], root2, [h1[5:]])


def test_root_from_inclusion_proof_refuses_paths_of_the_wrong_length() -> None:
    # The root comparison would catch these in verify_inclusion; a caller that only computes
    # the root (to look it up) must not get a root for a malformed path.
    store = grown(8)
    leaf = store.nodes[(0, 5)]
    path = inclusion_proof(5, 8, store.reader(8))
    for bad in ([*path, path[0]], path[:-1]):
        with pytest.raises(VerificationError):
            root_from_inclusion_proof(leaf, 5, 8, bad)


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=70), st.data())
def test_inclusion_proof_in_memory_verifies_against_the_root(
    items: list[bytes], data: st.DataObject
) -> None:
    leaves = [leaf_hash(i) for i in items]
    index = data.draw(st.integers(0, len(leaves) - 1))
    path = inclusion_proof_in(leaves, index)
    root = root_from_leaf_hashes(leaves)
    verify_inclusion(leaves[index], index, len(leaves), path, root)
