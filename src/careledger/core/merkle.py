"""RFC 9162 (RFC 6962) Merkle log: hashing, append, proofs over a node store, verification.

Only perfect subtrees are stored: once complete they never change, so the node store is
append-only and every historical tree size stays provable. What is not perfect (the right edge
of a tree) is recomputed from the perfect nodes of its binary decomposition. Proof generation
plans all NodeIds first and reads them in one ``get_nodes`` call: one store round trip and
O(log n) nodes per proof.

Generation raises ValidationError for impossible requests. The ``verify_*`` functions treat all
their inputs as hostile (sizes and indices included) and answer every failure, malformed input
too, with VerificationError: a client has exactly one outcome to handle, "does not verify".
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import TypeAlias

from careledger.errors import StorageError, ValidationError, VerificationError

HASH_SIZE = 32

NodeId: TypeAlias = tuple[int, int]
"""(level, index): the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level)."""

GetNodes: TypeAlias = Callable[[Sequence[NodeId]], Sequence[bytes]]
"""Batch read of stored perfect-subtree hashes, returned in the order asked."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_EMPTY_ROOT = hashlib.sha256(b"").digest()

_Range: TypeAlias = tuple[int, int]  # leaves [lo, hi) of one subtree of the RFC tree


# --- hashing -------------------------------------------------------------------------------


def empty_root() -> bytes:
    """MTH({}): what a verifier must expect of a log with no entries."""
    return _EMPTY_ROOT


def leaf_hash(data: bytes) -> bytes:
    """The 0x00 prefix keeps a leaf from ever passing for an interior node."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node; children must be full hashes or the 0x00/0x01 domain split means nothing."""
    _check_hash(left, "left child")
    _check_hash(right, "right child")
    return _hash_children(left, right)


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) by the RFC 9162 §2.1.1 recursion: the definition everything else must match."""
    for h in leaf_hashes:
        _check_hash(h, "leaf hash")
    if not leaf_hashes:
        return _EMPTY_ROOT
    return _mth(leaf_hashes, 0, len(leaf_hashes))


# --- incremental append --------------------------------------------------------------------


def append_leaf_hashes(
    frontier: Sequence[bytes], size: int, leaf_hashes: Sequence[bytes]
) -> tuple[list[bytes], list[tuple[NodeId, bytes]]]:
    """Append without reading the store: the frontier is all an append ever needs.

    Returns the new frontier and every perfect node the append completed (leaves included),
    which the caller stores; nodes are immutable, so storing them is write-once.
    """
    _check_size(size, "size")
    if len(frontier) != size.bit_count():
        raise ValidationError(
            f"frontier has {len(frontier)} hashes, a log of size {size} has {size.bit_count()}"
        )
    for h in frontier:
        _check_hash(h, "frontier hash")
    for h in leaf_hashes:
        _check_hash(h, "leaf hash")
    stack = list(frontier)
    completed: list[tuple[NodeId, bytes]] = []
    for index, h in enumerate(leaf_hashes, start=size):
        completed.append(((0, index), h))
        level = 0
        # Each trailing 1 bit of the index is a left sibling on the frontier waiting for us.
        while (index >> level) & 1:
            h = _hash_children(stack.pop(), h)
            level += 1
            completed.append(((level, index >> level), h))
        stack.append(h)
    return stack, completed


def root_from_frontier(frontier: Sequence[bytes]) -> bytes:
    """The root of the current size without touching the store."""
    for h in frontier:
        _check_hash(h, "frontier hash")
    return _fold(frontier)


def frontier_nodes(size: int) -> list[NodeId]:
    """The stored nodes whose hashes are the frontier of ``size``, to rebuild it on restart."""
    _check_size(size, "size")
    return _decompose(0, size)


# --- proof generation over a node store ----------------------------------------------------


def root_at(size: int, get_nodes: GetNodes) -> bytes:
    """Root of any historical size, so old checkpoints can be re-derived from the store."""
    _check_size(size, "size")
    if size == 0:
        return _EMPTY_ROOT
    return _hash_ranges([(0, size)], get_nodes)[0]


def inclusion_proof(index: int, size: int, get_nodes: GetNodes) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, leaf-side first."""
    _check_size(size, "size")
    if not 0 <= index < size:
        raise ValidationError(f"leaf index {index} is not in a log of size {size}")
    return _hash_ranges(_inclusion_ranges(index, size), get_nodes)


def inclusion_proof_in(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) over leaf hashes held in memory (a small tree, e.g. one window of
    device readings), leaf-side first."""
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ValidationError(f"leaf index {index} is not in a tree of size {size}")
    return [_mth(leaf_hashes, lo, hi) for lo, hi in _inclusion_ranges(index, size)]


def consistency_proof(first: int, second: int, get_nodes: GetNodes) -> list[bytes]:
    """PROOF(first, D[second]) of RFC 9162 §2.1.4.1; empty when the sizes are equal.

    first == 0 is refused: nothing can be proven about an empty tree (RFC 9162 needs 0 < m).
    """
    if not 0 < first <= second:
        raise ValidationError(f"consistency needs 0 < first <= second, got {first}, {second}")
    if first == second:
        return []
    return _hash_ranges(_consistency_ranges(first, second), get_nodes)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -----------------------------------------


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, path: Sequence[bytes]
) -> bytes:
    """RFC 9162 §2.1.3.2 up to the final comparison, for callers that look the root up."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not in a log of size {size}")
    _require_hash(leaf_hash, "leaf hash")
    for p in path:
        _require_hash(p, "inclusion proof hash")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in path:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the tree is tall")
        if fn & 1 or fn == sn:
            r = _hash_children(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = _hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the tree is tall")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> None:
    """Raise unless ``path`` proves leaf ``index`` is ``leaf_hash`` in the tree with ``root``."""
    _require_hash(root, "root")
    computed = root_from_inclusion_proof(leaf_hash, index, size, path)
    if not hmac.compare_digest(computed, root):
        raise VerificationError("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> None:
    """Raise unless the tree with ``second_root`` is an append-only extension of ``first_root``.

    Equal sizes need an empty proof and equal roots; first == 0 never verifies, as nothing can be
    proven about an empty tree. Everything else is RFC 9162 §2.1.4.2 to the letter.
    """
    _require_hash(first_root, "first root")
    _require_hash(second_root, "second root")
    for c in path:
        _require_hash(c, "consistency proof hash")
    if not 0 < first <= second:
        raise VerificationError(f"consistency needs 0 < first <= second, got {first}, {second}")
    if first == second:
        if path:
            raise VerificationError("equal sizes need an empty consistency proof")
        if not hmac.compare_digest(first_root, second_root):
            raise VerificationError("equal sizes but different roots")
        return
    if not path:
        raise VerificationError("empty consistency proof")
    nodes = list(path)
    if first & (first - 1) == 0:
        nodes.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than the tree is tall")
        if fn & 1 or fn == sn:
            fr = _hash_children(c, fr)
            sr = _hash_children(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = _hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    # Evaluate all three so the time taken does not say which one failed.
    first_ok = hmac.compare_digest(fr, first_root)
    second_ok = hmac.compare_digest(sr, second_root)
    if not (first_ok and second_ok and sn == 0):
        raise VerificationError("consistency proof does not connect the two roots")


# --- private helpers -----------------------------------------------------------------------


def _hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return hashes[lo]
    k = _split(hi - lo)
    return _hash_children(_mth(hashes, lo, lo + k), _mth(hashes, lo + k, hi))


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Hash of a subtree from the perfect subtrees of its decomposition, largest first.

    Folding right to left is the MTH recursion itself: the left part is always the largest
    power of two, and what remains on the right is again a decomposition.
    """
    if not hashes:
        return _EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = _hash_children(h, acc)
    return acc


def _decompose(lo: int, hi: int) -> list[NodeId]:
    """Perfect subtrees covering [lo, hi), largest first.

    Only called on subtrees of the RFC tree, whose ``lo`` is a multiple of a power of two at
    least ``hi - lo``, so every piece lands on its own level's grid.
    """
    nodes: list[NodeId] = []
    width = hi - lo
    pos = lo
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            nodes.append((level, pos >> level))
            pos += 1 << level
    return nodes


def _inclusion_ranges(index: int, size: int) -> list[_Range]:
    """The subtrees whose roots make PATH(index, D[size]), leaf-side first."""
    ranges: list[_Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def _consistency_ranges(first: int, second: int) -> list[_Range]:
    """The subtrees whose roots make SUBPROOF(first, D[second], true), in proof order."""
    ranges: list[_Range] = []
    lo, hi, whole = 0, second, True
    while first != hi:
        k = _split(hi - lo)
        if first <= lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            whole = False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _hash_ranges(ranges: Sequence[_Range], get_nodes: GetNodes) -> list[bytes]:
    """Hash each subtree, reading every perfect node needed in a single batch."""
    groups = [_decompose(lo, hi) for lo, hi in ranges]
    ids = [node for group in groups for node in group]
    if not ids:
        return []
    hashes = list(get_nodes(ids))
    if len(hashes) != len(ids):
        raise StorageError(f"node store returned {len(hashes)} hashes for {len(ids)} nodes")
    for h in hashes:
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise StorageError("node store returned a value that is not a 32-byte hash")
    out: list[bytes] = []
    pos = 0
    for group in groups:
        out.append(_fold(hashes[pos : pos + len(group)]))
        pos += len(group)
    return out


def _check_size(value: int, what: str) -> None:
    if value < 0:
        raise ValidationError(f"{what} must not be negative, got {value}")


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ValidationError(f"{what} must be a {HASH_SIZE}-byte hash")


def _require_hash(value: bytes, what: str) -> None:
    """A wrong-length hash would let bytes slide between the two children of a node."""
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise VerificationError(f"{what} is not a {HASH_SIZE}-byte hash")
