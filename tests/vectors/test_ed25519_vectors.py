"""Ed25519 known answers and the exact verification rule set every node must share.

* ``sign.input`` (SUPERCOP, 1,024 lines): seed -> public key, exact deterministic signature,
  verification, and rejection after one flipped bit.
* Wycheproof ``ed25519_test.json``: every case. It has no "acceptable" results; the policy if a
  future version adds some is "assert whatever libsodium does, after reviewing it here", so the
  test refuses to pass silently on new "acceptable" cases.
* Hand-built edge cases (small-order and mixed-order keys, non-canonical encodings, cofactored
  vs cofactorless equation) made with a tiny pure-Python Edwards arithmetic below, pinning what
  libsodium 1.0.20 does where Ed25519 implementations disagree.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest

from careledger.core.keys import KeyPair, require_signature, verify_signature
from careledger.errors import VerificationError
from tests.support.vectors import load_json, vector_path

# --- sign.input ---------------------------------------------------------------------------------


def _sign_input() -> list[tuple[bytes, bytes, bytes, bytes]]:
    """``(seed, public key, message, signature)`` per line of djb's ``sign.input``."""
    rows = []
    for line in vector_path("ed25519-sign-input", "sign.input").read_text("ascii").splitlines():
        sk_hex, pk_hex, msg_hex, sm_hex, _ = line.split(":")
        sk, pk, msg, sm = (bytes.fromhex(x) for x in (sk_hex, pk_hex, msg_hex, sm_hex))
        assert sk[32:] == pk
        assert sm[64:] == msg
        rows.append((sk[:32], pk, msg, sm[:64]))
    return rows


SIGN_INPUT = _sign_input()


def test_sign_input_has_1024_cases() -> None:
    assert len(SIGN_INPUT) == 1024


def test_sign_input_public_keys_and_signatures() -> None:
    bad = []
    for i, (seed, pk, msg, sig) in enumerate(SIGN_INPUT):
        pair = KeyPair.from_seed(seed)
        if pair.public_key != pk or pair.sign(msg) != sig or not verify_signature(pk, msg, sig):
            bad.append(i)
    assert bad == []


def test_sign_input_flipped_bits_fail() -> None:
    bad = []
    for i, (_, pk, msg, sig) in enumerate(SIGN_INPUT):
        bit = (i * 37) % 512  # a different bit of R or S on each line
        flipped_sig = bytearray(sig)
        flipped_sig[bit // 8] ^= 1 << (bit % 8)
        if verify_signature(pk, msg, bytes(flipped_sig)):
            bad.append((i, "sig"))
        flipped_pk = bytearray(pk)
        flipped_pk[i % 32] ^= 1 << (i % 8)
        if verify_signature(bytes(flipped_pk), msg, sig):
            bad.append((i, "pk"))
        if msg:
            flipped_msg = bytearray(msg)
            flipped_msg[i % len(msg)] ^= 0x80
            if verify_signature(pk, bytes(flipped_msg), sig):
                bad.append((i, "msg"))
        elif verify_signature(pk, b"\x00", sig):
            bad.append((i, "msg"))
    assert bad == []


# --- Wycheproof ---------------------------------------------------------------------------------


def _wycheproof_cases() -> list[tuple[int, bytes, bytes, bytes, str, list[str]]]:
    data: dict[str, Any] = load_json("wycheproof", "ed25519_test.json")
    assert data["algorithm"] == "EDDSA"
    cases = []
    for group in data["testGroups"]:
        assert group["type"] == "EddsaVerify"
        assert group["publicKey"]["curve"] == "edwards25519"
        pk = bytes.fromhex(group["publicKey"]["pk"])
        for test in group["tests"]:
            cases.append(
                (
                    test["tcId"],
                    pk,
                    bytes.fromhex(test["msg"]),
                    bytes.fromhex(test["sig"]),
                    test["result"],
                    test["flags"],
                )
            )
    assert len(cases) == data["numberOfTests"]
    return cases


WYCHEPROOF = _wycheproof_cases()


def test_wycheproof_counts() -> None:
    results = Counter(case[4] for case in WYCHEPROOF)
    # No "acceptable" cases: if a new vector file adds some, decide and pin them explicitly.
    assert results == {"valid": 88, "invalid": 63}


@pytest.mark.parametrize(
    ("tc_id", "pk", "msg", "sig", "result", "flags"),
    WYCHEPROOF,
    ids=[f"tc{case[0]}-{case[4]}" for case in WYCHEPROOF],
)
def test_wycheproof(
    tc_id: int, pk: bytes, msg: bytes, sig: bytes, result: str, flags: list[str]
) -> None:
    expected = result == "valid"
    assert verify_signature(pk, msg, sig) is expected, (tc_id, flags)
    if expected:
        require_signature(pk, msg, sig)
    else:
        with pytest.raises(VerificationError):
            require_signature(pk, msg, sig)


# --- edge cases: a minimal Edwards25519 (RFC 8032 §5.1), for building signatures only -----------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)
IDENTITY: Point = (0, 1, 1, 0)


def _add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s: int, p: Point) -> Point:
    q = IDENTITY
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _encode(p: Point) -> bytes:
    z_inv = pow(p[2], P - 2, P)
    x, y = p[0] * z_inv % P, p[1] * z_inv % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(data: bytes) -> Point:
    """Lenient decoding (y may be >= p), as a verifier that forgets the checks would do."""
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, (y & ((1 << 255) - 1)) % P
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    assert (x * x - x2) % P == 0, "not on the curve"
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


BASE = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
# A point of order 8 (from libsodium's small-order blocklist).
T8 = _decode(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"))


def _challenge(r_enc: bytes, a_enc: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r_enc + a_enc + msg).digest(), "little") % L


def _same(p: Point, q: Point) -> bool:
    return _encode(p) == _encode(q)


def _cofactorless_ok(a_enc: bytes, msg: bytes, sig: bytes) -> bool:
    """``[S]B == R + [k]A`` with lenient decoding and no other check."""
    r_enc, s = sig[:32], int.from_bytes(sig[32:], "little")
    k = _challenge(r_enc, a_enc, msg)
    return _same(_mul(s, BASE), _add(_decode(r_enc), _mul(k, _decode(a_enc))))


def _cofactored_ok(a_enc: bytes, msg: bytes, sig: bytes) -> bool:
    """``[8][S]B == [8]R + [8][k]A``."""
    r_enc, s = sig[:32], int.from_bytes(sig[32:], "little")
    k = _challenge(r_enc, a_enc, msg)
    lhs = _mul(8 * s, BASE)
    return _same(lhs, _mul(8, _add(_decode(r_enc), _mul(k, _decode(a_enc)))))


def _sig(r_enc: bytes, s: int) -> bytes:
    return r_enc + s.to_bytes(32, "little")


def _message_where(pred: Any, r_enc: bytes, a_enc: bytes) -> bytes:
    for i in range(1000):
        msg = b"careledger edge case %d" % i
        if pred(_challenge(r_enc, a_enc, msg)):
            return msg
    raise AssertionError("no message found")  # pragma: no cover


SECRET = 0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF % L
NONCE = 0x0FEDCBA0987654321 % L
A_ENC = _encode(_mul(SECRET, BASE))
R_ENC = _encode(_mul(NONCE, BASE))


def test_helper_reproduces_rfc8032_test_1() -> None:
    seed, pk, msg, sig = SIGN_INPUT[0]
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    r = int.from_bytes(hashlib.sha512(h[32:] + msg).digest(), "little") % L
    r_enc = _encode(_mul(r, BASE))
    assert _encode(_mul(a, BASE)) == pk
    assert _sig(r_enc, (r + _challenge(r_enc, pk, msg) * a) % L) == sig
    assert _cofactorless_ok(pk, msg, sig)
    assert _cofactored_ok(pk, msg, sig)
    assert _same(_mul(8, T8), IDENTITY)
    assert not _same(_mul(4, T8), IDENTITY)


def test_plain_signature_from_helper_verifies() -> None:
    msg = b"baseline"
    sig = _sig(R_ENC, (NONCE + _challenge(R_ENC, A_ENC, msg) * SECRET) % L)
    assert verify_signature(A_ENC, msg, sig)


def test_non_canonical_s_is_rejected() -> None:
    """S + L satisfies the equation too; accepting it would make signatures malleable."""
    msg = b"malleable?"
    s = (NONCE + _challenge(R_ENC, A_ENC, msg) * SECRET) % L
    assert verify_signature(A_ENC, msg, _sig(R_ENC, s))
    assert _cofactorless_ok(A_ENC, msg, _sig(R_ENC, s + L))
    assert not verify_signature(A_ENC, msg, _sig(R_ENC, s + L))


def test_small_order_public_keys_are_rejected() -> None:
    """With A of small order, R = [r]B and S = r "verify" for many messages: refused."""
    identity = _encode(IDENTITY)
    order_2 = _encode(_mul(4, T8))  # (0, -1)
    for a_enc in (identity, order_2, _encode(T8)):
        msg = _message_where(lambda k: k % 8 == 0, R_ENC, a_enc)
        sig = _sig(R_ENC, NONCE)
        assert _cofactorless_ok(a_enc, msg, sig)
        assert not verify_signature(a_enc, msg, sig)


def test_non_canonical_public_key_is_rejected() -> None:
    """y = p + 1 encodes the identity non-canonically; refused (also small order)."""
    a_enc = (P + 1).to_bytes(32, "little")
    sig = _sig(R_ENC, NONCE)
    assert _cofactorless_ok(a_enc, b"x", sig)
    assert not verify_signature(a_enc, b"x", sig)


def test_mixed_order_public_key_follows_the_cofactorless_equation() -> None:
    """A = [a]B + T8 is accepted exactly when [S]B == R + [k]A holds (k = 0 mod 8)."""
    a_enc = _encode(_add(_mul(SECRET, BASE), T8))
    msg_ok = _message_where(lambda k: k % 8 == 0, R_ENC, a_enc)
    sig_ok = _sig(R_ENC, (NONCE + _challenge(R_ENC, a_enc, msg_ok) * SECRET) % L)
    assert _cofactorless_ok(a_enc, msg_ok, sig_ok)
    assert verify_signature(a_enc, msg_ok, sig_ok)

    msg_cof = _message_where(lambda k: k % 8 != 0, R_ENC, a_enc)
    sig_cof = _sig(R_ENC, (NONCE + _challenge(R_ENC, a_enc, msg_cof) * SECRET) % L)
    assert _cofactored_ok(a_enc, msg_cof, sig_cof)
    assert not _cofactorless_ok(a_enc, msg_cof, sig_cof)
    assert not verify_signature(a_enc, msg_cof, sig_cof)  # cofactored-only: refused


def test_small_order_r_is_rejected() -> None:
    """R = identity with S = k*a satisfies the equation; libsodium refuses small-order R."""
    msg = b"small R"
    r_enc = _encode(IDENTITY)
    sig = _sig(r_enc, _challenge(r_enc, A_ENC, msg) * SECRET % L)
    assert _cofactorless_ok(A_ENC, msg, sig)
    assert not verify_signature(A_ENC, msg, sig)


def test_non_canonical_r_is_rejected() -> None:
    """R given as y = p + 1 (the identity, non-canonically) satisfies a lenient check."""
    msg = b"non-canonical R"
    r_enc = (P + 1).to_bytes(32, "little")
    sig = _sig(r_enc, _challenge(r_enc, A_ENC, msg) * SECRET % L)
    assert _cofactorless_ok(A_ENC, msg, sig)
    assert not verify_signature(A_ENC, msg, sig)


def test_mixed_order_r_follows_the_cofactorless_equation() -> None:
    """R = [r]B + T8 never satisfies the cofactorless equation, only the cofactored one."""
    msg = b"mixed R"
    r_enc = _encode(_add(_mul(NONCE, BASE), T8))
    sig = _sig(r_enc, (NONCE + _challenge(r_enc, A_ENC, msg) * SECRET) % L)
    assert _cofactored_ok(A_ENC, msg, sig)
    assert not _cofactorless_ok(A_ENC, msg, sig)
    assert not verify_signature(A_ENC, msg, sig)
