"""C2SP signed notes, tlog checkpoints and verifier keys (careledger.core.checkpoint)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from careledger.core.checkpoint import (
    MAX_SIGNATURES,
    MAX_TREE_SIZE,
    Checkpoint,
    NoteSignature,
    NoteVerifier,
    SeedSigner,
    SignedNote,
    add_signature,
    format_checkpoint,
    format_note,
    format_vkey,
    key_hash,
    merge_notes,
    note_signature_line,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_note,
    verify_note,
)
from careledger.errors import ValidationError, VerificationError

EM = "\u2014"  # em dash, the first character of every signature line

# ---------------------------------------------------------------------------------------------
# Test vectors.
#
# From golang.org/x/mod, file sumdb/note/note_test.go (and the package doc in sumdb/note/note.go),
# "Copyright 2019 The Go Authors. All rights reserved. Use of this source code is governed by a
# BSD-style license" (BSD 3-Clause, https://go.googlesource.com/mod/+/refs/heads/master/LICENSE).
GO_PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_PETER_SIG = (
    EM + " PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
GO_ENOCH_SIG = (
    EM + " EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
GO_SIGNED = GO_TEXT + "\n" + GO_PETER_SIG  # TestSign's `want`
GO_DOUBLY_SIGNED = GO_SIGNED + GO_ENOCH_SIG  # note.go's package doc, "a doubly-signed message"
# TestNewVerifier: "wrong length key, with adjusted key hash" / "unknown algorithm, ...".
GO_BAD_VKEYS = (
    "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
    "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
)

# A real checkpoint of the Go checksum database, "Retrieved from https://sum.golang.org/latest,
# 2024-09-23", and the database's verifier key (golang/go src/cmd/go/internal/modfetch/key.go),
# as quoted in sigsum/sigsum-go, file pkg/checkpoint/checkpoint_test.go (TestGoSumDBCheckpoint),
# "Copyright (c) 2021, The Sigsum Project Authors", BSD 2-Clause License.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n"
    "30055305\n"
    "mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n"
    "\n" + EM + " sum.golang.org "
    "Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevucFcAAlWFJJYle3EJlDCrQ+y3A8=\n"
)

# The examples of the C2SP specifications (https://github.com/C2SP/C2SP, files signed-note.md and
# tlog-checkpoint.md). "All C2SP specifications are licensed under CC BY 4.0. All code and data in
# this repository is licensed under the BSD 1-Clause License."
C2SP_NOTE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed è subito sera.\n"
    "\n" + EM + " quasimodo.example/salvatore "
    "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)
C2SP_CHECKPOINT = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n" + EM + " example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)


def _go_seed() -> bytes:
    """The Ed25519 seed inside GO_PETER_SKEY ("PRIVATE+KEY+<name>+<hash>+<base64(0x01||seed)>")."""
    raw = base64.b64decode(GO_PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 0x01
    return raw[1:]


PETER = parse_vkey(GO_PETER_VKEY)
ENOCH = parse_vkey(GO_ENOCH_VKEY)
SUMDB = parse_vkey(SUMDB_VKEY)
ROOT = hashlib.sha256(b"root").digest()


def _signer(n: int) -> SeedSigner:
    return SeedSigner(bytes([n]) * 32)


def _verifier(name: str, signer: SeedSigner) -> NoteVerifier:
    return parse_vkey(format_vkey(name, signer.public_key))


# --------------------------------------------------------------------------- Go vectors


def test_go_vkey_is_the_public_half_of_the_go_skey() -> None:
    signer = SeedSigner(_go_seed())
    assert PETER.name == "PeterNeumann"
    assert PETER.key_hash == bytes.fromhex("c74f20a3")
    assert PETER.public_key == signer.public_key
    assert key_hash("PeterNeumann", signer.public_key) == bytes.fromhex("c74f20a3")
    assert format_vkey("PeterNeumann", signer.public_key) == GO_PETER_VKEY
    assert format_vkey(ENOCH.name, ENOCH.public_key) == GO_ENOCH_VKEY


def test_sign_reproduces_go_output_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, "PeterNeumann", SeedSigner(_go_seed())) == GO_SIGNED
    assert sign_note(GO_TEXT, "PeterNeumann", _go_seed()) == GO_SIGNED  # a bare seed works too
    assert note_signature_line(GO_TEXT, "PeterNeumann", _go_seed()) == GO_PETER_SIG


def test_go_open_one_verified_one_unknown() -> None:
    assert verify_note(GO_DOUBLY_SIGNED, [PETER]) == (GO_TEXT, ("PeterNeumann",))
    assert verify_note(GO_DOUBLY_SIGNED, [ENOCH]) == (GO_TEXT, ("EnochRoot",))


def test_go_open_both_verified_in_line_order() -> None:
    body, names = verify_note(GO_DOUBLY_SIGNED, [ENOCH, PETER], min_signatures=2)
    assert body == GO_TEXT
    assert names == ("PeterNeumann", "EnochRoot")


def test_go_open_no_known_key_is_rejected() -> None:
    with pytest.raises(VerificationError) as err:
        verify_note(GO_DOUBLY_SIGNED, [])
    assert err.value.code == "NOTE_UNVERIFIED"


def test_go_parse_note() -> None:
    note = parse_note(GO_DOUBLY_SIGNED)
    assert note.body == GO_TEXT
    assert [(s.name, s.key_hash.hex(), len(s.signature)) for s in note.signatures] == [
        ("PeterNeumann", "c74f20a3", 64),
        ("EnochRoot", "af0cfe78", 64),
    ]
    assert format_note(note) == GO_DOUBLY_SIGNED


def test_go_too_many_signatures() -> None:
    for known in ([PETER], []):
        with pytest.raises(ValidationError):
            verify_note(GO_TEXT + "\n" + GO_PETER_SIG * 101, known)
    with pytest.raises(ValidationError):
        parse_note(GO_TEXT + "\n" + GO_PETER_SIG * (MAX_SIGNATURES + 1))
    assert len(parse_note(GO_TEXT + "\n" + GO_PETER_SIG * MAX_SIGNATURES).signatures) == 100


def test_go_invalid_signature_by_known_key() -> None:
    bad = GO_TEXT + "\n" + GO_PETER_SIG[:60] + "ABCD" + GO_PETER_SIG[60:]
    with pytest.raises(VerificationError) as err:
        verify_note(bad, [PETER])
    assert err.value.code == "BAD_NOTE_SIGNATURE"
    assert "PeterNeumann+c74f20a3" in err.value.message
    verify_note(bad + GO_ENOCH_SIG, [ENOCH])  # the same bad line from an unknown key is ignored


def test_go_duplicated_verified_and_unverified_signatures() -> None:
    enoch_abcd = GO_ENOCH_SIG[:60] + "ABCD" + GO_ENOCH_SIG[60:]
    text = GO_TEXT + "\n" + GO_PETER_SIG + GO_PETER_SIG + GO_ENOCH_SIG + GO_ENOCH_SIG + enoch_abcd
    assert verify_note(text, [PETER]) == (GO_TEXT, ("PeterNeumann",))
    # Duplicates by one key count once.
    with pytest.raises(VerificationError):
        verify_note(GO_TEXT + "\n" + GO_PETER_SIG * 2, [PETER], min_signatures=2)
    # ... and a known key's bad duplicate is caught, even after a good line (Go skips it).
    with pytest.raises(VerificationError):
        verify_note(text, [PETER, ENOCH])


@pytest.mark.parametrize(
    "text",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + GO_PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + GO_PETER_SIG,
        GO_TEXT + "\n" + GO_PETER_SIG.replace("PeterNeumann", "Bad Name"),
        GO_TEXT + "\n" + GO_PETER_SIG + "Unexpected line.\n",
        # and some of our own
        GO_TEXT + "\n" + GO_PETER_SIG.replace(EM, "-"),
        GO_TEXT + "\n" + GO_PETER_SIG.replace(EM + " ", EM),
        GO_TEXT + "\n" + GO_PETER_SIG.replace(" x08", "  x08"),
        GO_TEXT + "\n" + GO_PETER_SIG.replace("AM=", "AM"),  # unpadded base64
        GO_TEXT + "\n" + GO_PETER_SIG.replace("AM=", "AN="),  # non-canonical trailing bits
        GO_TEXT + "\n" + GO_PETER_SIG.replace("/", "_"),  # URL-safe alphabet
        GO_TEXT + "\n" + EM + " PeterNeumann x08gow==\n",  # key hash but no signature
        GO_TEXT + "\n" + EM + " PeterNeumann \n",
        GO_TEXT + "\n" + EM + " PeterNeumann\n",
        GO_TEXT + "\n" + EM + "  x08go/ZJ\n",
        GO_TEXT + "\n" + GO_PETER_SIG + "\n",
        (GO_TEXT + "\n" + GO_PETER_SIG).replace("\n", "\r\n"),
        GO_TEXT.replace(",\n", ",\r\n") + "\n" + GO_PETER_SIG,
        "",
    ],
)
def test_go_malformed_notes(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_note(text)
    with pytest.raises(ValidationError):
        verify_note(text, [PETER])


def test_invalid_utf8_note_bytes() -> None:
    with pytest.raises(ValidationError):
        parse_note(b"\xff" + GO_SIGNED.encode("utf-8"))
    with pytest.raises(ValidationError):
        parse_note("\ud800" + GO_SIGNED)  # a lone surrogate has no UTF-8 encoding
    assert parse_note(GO_SIGNED.encode("utf-8")).body == GO_TEXT


def test_go_unknown_keys_sharing_name_or_hash_are_ignored() -> None:
    raw = base64.b64decode(GO_PETER_SIG.split(" ")[2])
    other_hash = EM + " PeterNeumann " + base64.b64encode(b"\0\0\0\0" + raw[4:]).decode() + "\n"
    other_name = GO_PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    text = GO_TEXT + "\n" + other_hash + other_name + GO_PETER_SIG
    assert verify_note(text, [PETER]) == (GO_TEXT, ("PeterNeumann",))
    with pytest.raises(VerificationError):
        verify_note(GO_TEXT + "\n" + other_hash + other_name, [PETER])


def test_go_vkey_manglings_are_rejected() -> None:
    # TestNewVerifier: every proper substring and every single-byte increment fails.
    b = GO_PETER_VKEY.encode("ascii")
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(ValidationError):
                    parse_vkey(b[i:j].decode("ascii"))
    for i in range(len(b)):
        mangled = bytearray(b)
        mangled[i] += 1
        with pytest.raises(ValidationError):
            parse_vkey(mangled.decode("ascii"))
    for vkey in GO_BAD_VKEYS:
        with pytest.raises(ValidationError):
            parse_vkey(vkey)


# --------------------------------------------------------------------------- checkpoints


def test_real_sumdb_checkpoint_verifies() -> None:
    assert SUMDB.key_hash == bytes.fromhex("033de0ae")
    body, names = verify_note(SUMDB_CHECKPOINT, [SUMDB, PETER])
    assert names == ("sum.golang.org",)
    cp = parse_checkpoint(body)
    assert cp == Checkpoint(
        origin="go.sum database tree",
        size=30055305,
        root=base64.b64decode("mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM="),
    )
    assert format_checkpoint(cp) == body
    tampered = SUMDB_CHECKPOINT.replace("30055305", "30055306")
    with pytest.raises(VerificationError):
        verify_note(tampered, [SUMDB])


def test_c2sp_checkpoint_example() -> None:
    note = parse_note(C2SP_CHECKPOINT)
    cp = parse_checkpoint(note.body)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert format_checkpoint(cp) == note.body
    assert format_note(note) == C2SP_CHECKPOINT
    # We hold no key named example.com/behind-the-sofa: nothing verifies.
    with pytest.raises(VerificationError):
        verify_note(C2SP_CHECKPOINT, [SUMDB, PETER])


def test_c2sp_checkpoint_example_is_a_relabelled_sumdb_checkpoint() -> None:
    # The example's key ID is sum.golang.org's (033de0ae) and its signature verifies under that
    # key once the origin line and key name are put back: the spec example is a real checkpoint.
    relabelled = C2SP_CHECKPOINT.replace(
        "example.com/behind-the-sofa\n", "go.sum database tree\n"
    ).replace(" example.com/behind-the-sofa ", " sum.golang.org ")
    body, names = verify_note(relabelled, [SUMDB])
    assert names == ("sum.golang.org",)
    assert parse_checkpoint(body).size == 20852163


def test_c2sp_signed_note_example_body_has_a_blank_line() -> None:
    note = parse_note(C2SP_NOTE)
    assert note.body == C2SP_NOTE[: C2SP_NOTE.index("\n\n" + EM) + 1]
    assert note.body.count("\n") == 4
    assert note.signatures[0].name == "quasimodo.example/salvatore"
    assert len(note.signatures[0].signature) == 64
    assert format_note(note) == C2SP_NOTE


def test_go_tlog_tree_note_format() -> None:
    # golang.org/x/mod sumdb/tlog/note_test.go TestFormatTree (BSD 3-Clause, The Go Authors).
    golden = "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"
    cp = parse_checkpoint(golden)
    assert cp.size == 123456789012
    assert format_checkpoint(cp) == golden


def test_checkpoint_with_extensions_round_trips() -> None:
    cp = Checkpoint("example.com/log42", 7, ROOT, ("ext one", "— two"))
    body = format_checkpoint(cp)
    assert body.endswith("ext one\n— two\n")
    assert parse_checkpoint(body) == cp


@pytest.mark.parametrize("size", [0, 1, 9, 10, 20852163, MAX_TREE_SIZE])
def test_checkpoint_sizes(size: int) -> None:
    cp = Checkpoint("o", size, ROOT)
    assert format_checkpoint(cp).split("\n")[1] == str(size)
    assert parse_checkpoint(format_checkpoint(cp)).size == size


GOOD_BODY = "example.com/log\n5\n" + base64.b64encode(ROOT).decode() + "\n"


@pytest.mark.parametrize(
    "body",
    [
        GOOD_BODY[:-1],  # missing trailing newline
        GOOD_BODY.replace("\n", "\r\n"),  # CRLF
        GOOD_BODY.replace("\n5\n", "\n05\n"),
        GOOD_BODY.replace("\n5\n", "\n00\n"),
        GOOD_BODY.replace("\n5\n", "\n-1\n"),
        GOOD_BODY.replace("\n5\n", "\n+5\n"),
        GOOD_BODY.replace("\n5\n", "\n 5\n"),
        GOOD_BODY.replace("\n5\n", "\n5 \n"),
        GOOD_BODY.replace("\n5\n", "\n1_0\n"),
        GOOD_BODY.replace("\n5\n", "\n0x5\n"),
        GOOD_BODY.replace("\n5\n", "\n\u0665\n"),  # ARABIC-INDIC DIGIT FIVE
        GOOD_BODY.replace("\n5\n", "\n\uff15\n"),  # FULLWIDTH DIGIT FIVE
        GOOD_BODY.replace("\n5\n", "\n5.0\n"),
        GOOD_BODY.replace("\n5\n", "\n\n"),
        GOOD_BODY.replace("\n5\n", f"\n{MAX_TREE_SIZE + 1}\n"),  # 2**64
        GOOD_BODY.replace("\n5\n", "\n" + "9" * 100 + "\n"),
        GOOD_BODY.replace("\n5\n", "\n" + "9" * 5000 + "\n"),  # huge (and past int() limits)
        "\n5\n" + base64.b64encode(ROOT).decode() + "\n",  # empty origin
        "example.com/log\n5\n",  # no root line
        "example.com/log\n",
        "",
        "\n",
        GOOD_BODY.replace("=\n", "\n"),  # unpadded
        GOOD_BODY.replace("=\n", "==\n"),
        GOOD_BODY.replace("=\n", "!\n"),
        "o\n5\n" + base64.b64encode(ROOT).decode().replace("/", "_").replace("+", "-") + "\n",
        "o\n5\n" + base64.b64encode(ROOT[:31]).decode() + "\n",  # 31-byte root
        "o\n5\n" + base64.b64encode(ROOT + b"\0").decode() + "\n",  # 33-byte root
        "o\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n",  # non-canonical base64
        "o\n5\n" + base64.b64encode(ROOT).decode() + "\n\n",  # empty extension line
        "o\n5\n" + base64.b64encode(ROOT).decode() + "\next\n\n",
        "o\tx\n5\n" + base64.b64encode(ROOT).decode() + "\n",  # control character
        "o\n5\n" + base64.b64encode(ROOT).decode() + "\ne\x00xt\n",
    ],
)
def test_malformed_checkpoints(body: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_checkpoint(body)
    assert err.value.code == "BAD_CHECKPOINT"


def test_checkpoint_constructor_validates() -> None:
    for kwargs in [
        {"origin": "", "size": 1, "root": ROOT},
        {"origin": "a\nb", "size": 1, "root": ROOT},
        {"origin": "o", "size": -1, "root": ROOT},
        {"origin": "o", "size": MAX_TREE_SIZE + 1, "root": ROOT},
        {"origin": "o", "size": True, "root": ROOT},
        {"origin": "o", "size": 1, "root": ROOT[:31]},
        {"origin": "o", "size": 1, "root": ROOT.hex()},
        {"origin": "o", "size": 1, "root": ROOT, "extensions": ("",)},
        {"origin": "o", "size": 1, "root": ROOT, "extensions": ("a\nb",)},
        {"origin": "o", "size": 1, "root": ROOT, "extensions": ["x"]},
    ]:
        with pytest.raises(ValidationError):
            Checkpoint(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- verifier keys


def test_vkey_round_trip_and_hash() -> None:
    signer = _signer(7)
    vkey = format_vkey("careledger.example/log", signer.public_key)
    v = parse_vkey(vkey)
    assert v == NoteVerifier("careledger.example/log", v.key_hash, signer.public_key)
    expected = hashlib.sha256(b"careledger.example/log\n\x01" + signer.public_key).digest()[:4]
    assert v.key_hash == expected
    assert vkey.split("+")[1] == expected.hex()
    # Go parses the hex with strconv.ParseUint, so upper case is accepted too.
    upper = GO_PETER_VKEY.replace("c74f20a3", "C74F20A3")
    assert parse_vkey(upper) == PETER


@pytest.mark.parametrize(
    "vkey",
    [
        GO_PETER_VKEY.replace("c74f20a3", "c74f20a4"),  # wrong hash
        GO_PETER_VKEY.replace("PeterNeumann", "PeterNeuman"),  # hash no longer matches
        GO_PETER_VKEY.replace("c74f20a3", "0xc74f20a3"),
        GO_PETER_VKEY.replace("c74f20a3", "c74f20a"),
        GO_PETER_VKEY.replace("c74f20a3", " 74f20a3"),
        GO_PETER_VKEY.replace("PeterNeumann", ""),
        GO_PETER_VKEY.replace("PeterNeumann", "Peter Neumann"),
        GO_PETER_VKEY + "=",
        GO_PETER_VKEY + "\n",
        "PeterNeumann+c74f20a3",
        "PeterNeumann",
        "",
        "+" + GO_PETER_VKEY,
    ],
)
def test_bad_vkeys(vkey: str) -> None:
    with pytest.raises(ValidationError):
        parse_vkey(vkey)


def test_verifier_constructor_checks_the_hash() -> None:
    with pytest.raises(ValidationError):
        NoteVerifier("PeterNeumann", bytes.fromhex("c74f20a4"), PETER.public_key)
    with pytest.raises(ValidationError):
        NoteVerifier("PeterNeumann", PETER.key_hash, PETER.public_key[:31])


@pytest.mark.parametrize(
    "name", ["", "a+b", "a b", "a\tb", "a\u00a0b", "a\u2028b", "a\u3000b", "a\x01b", "\ud800"]
)
def test_bad_key_names(name: str) -> None:
    with pytest.raises(ValidationError):
        key_hash(name, PETER.public_key)
    with pytest.raises(ValidationError):
        sign_note(GO_TEXT, name, _signer(1))


def test_unicode_key_names_are_fine() -> None:
    signer = _signer(3)
    note = sign_note("body\n", "hôpital.example/clé—1", signer)
    v = parse_vkey(format_vkey("hôpital.example/clé—1", signer.public_key))
    assert verify_note(note, [v]) == ("body\n", ("hôpital.example/clé—1",))


# --------------------------------------------------------------------------- signing


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """What a caller's key object looks like: a public_key attribute and a detached sign()."""

    seed: bytes

    @property
    def public_key(self) -> bytes:
        return crypto_sign_seed_keypair(self.seed)[0]

    def sign(self, message: bytes) -> bytes:
        return crypto_sign(message, crypto_sign_seed_keypair(self.seed)[1])[:64]


class AttachedSigner(KeyPair):
    """PyNaCl's SigningKey.sign() shape: signature followed by the message. Not allowed."""

    def sign(self, message: bytes) -> bytes:
        return crypto_sign(message, crypto_sign_seed_keypair(self.seed)[1])


class WrongKeySigner(KeyPair):
    def sign(self, message: bytes) -> bytes:
        return SeedSigner(bytes(32)).sign(message)


def test_signer_protocol_objects() -> None:
    kp = KeyPair(_go_seed())
    assert sign_note(GO_TEXT, "PeterNeumann", kp) == GO_SIGNED
    for bad in (AttachedSigner(_go_seed()), WrongKeySigner(_go_seed())):
        with pytest.raises(VerificationError) as err:
            sign_note(GO_TEXT, "PeterNeumann", bad)
        assert err.value.code == "BAD_SIGNER"


def test_seed_signer() -> None:
    with pytest.raises(ValidationError):
        SeedSigner(b"short")
    seed = bytes(range(32))
    signer = SeedSigner(seed)
    assert signer.public_key == crypto_sign_seed_keypair(seed)[0]
    assert repr(signer) == f"SeedSigner(public_key={signer.public_key.hex()})"  # no secret
    assert len(signer.sign(b"msg")) == 64


@pytest.mark.parametrize("body", ["", "no newline", "crlf\r\n", "nul\x00\n", "\ud800\n"])
def test_sign_rejects_bad_bodies(body: str) -> None:
    with pytest.raises(ValidationError):
        sign_note(body, "n", _signer(1))


def test_bodies_with_blank_lines_round_trip() -> None:
    signer = _signer(5)
    v = _verifier("n", signer)
    for body in ["\n", "a\n\nb\n", "a\n\n", "a\n\n\n", "\n\n"]:
        note = sign_note(body, "n", signer)
        assert parse_note(note).body == body
        assert verify_note(note, [v]) == (body, ("n",))


def test_note_too_large() -> None:
    with pytest.raises(ValidationError):
        sign_note("x" * (1 << 20) + "\n", "n", _signer(1))


# --------------------------------------------------------------------------- cosigning


def test_add_signature_matches_go_doubly_signed_note() -> None:
    # Enoch's skey is not published, so cosign with ours and check the merge path on Go's note.
    assert merge_notes(GO_SIGNED, GO_TEXT + "\n" + GO_ENOCH_SIG) == GO_DOUBLY_SIGNED
    assert merge_notes(GO_DOUBLY_SIGNED, GO_SIGNED) == GO_DOUBLY_SIGNED
    me = _signer(9)
    cosigned = add_signature(GO_SIGNED, "EnochRoot", me)
    assert cosigned.startswith(GO_SIGNED)
    body, names = verify_note(cosigned, [PETER, _verifier("EnochRoot", me)], min_signatures=2)
    assert (body, names) == (GO_TEXT, ("PeterNeumann", "EnochRoot"))
    # The real Enoch key does not know our line (different key ID): ignored, Peter still counts.
    assert verify_note(cosigned, [PETER, ENOCH]) == (GO_TEXT, ("PeterNeumann",))


def test_add_signature_replaces_the_same_keys_line() -> None:
    # Like Go TestSign: an existing (bad) signature by the same key is replaced by a good one.
    bogus = NoteSignature("PeterNeumann", PETER.key_hash, b"\x01" * 64)
    stale = format_note(SignedNote(GO_TEXT, (bogus, parse_note(GO_ENOCH_SIG_NOTE).signatures[0])))
    with pytest.raises(VerificationError):
        verify_note(stale, [PETER])
    fresh = add_signature(stale, "PeterNeumann", _go_seed())
    assert fresh == GO_TEXT + "\n" + GO_ENOCH_SIG + GO_PETER_SIG
    assert verify_note(fresh, [PETER, ENOCH], min_signatures=2)[1] == ("EnochRoot", "PeterNeumann")
    assert add_signature(fresh, "PeterNeumann", _go_seed()) == fresh


GO_ENOCH_SIG_NOTE = GO_TEXT + "\n" + GO_ENOCH_SIG


def test_add_signature_respects_the_limit() -> None:
    signers = [_signer(i) for i in range(MAX_SIGNATURES)]
    note = sign_note("b\n", "k0", signers[0])
    for i, s in enumerate(signers[1:], start=1):
        note = add_signature(note, f"k{i}", s)
    verifiers = [_verifier(f"k{i}", s) for i, s in enumerate(signers)]
    assert len(verify_note(note, verifiers, min_signatures=MAX_SIGNATURES)[1]) == MAX_SIGNATURES
    with pytest.raises(ValidationError):
        add_signature(note, "one-too-many", _signer(200))
    assert add_signature(note, "k5", signers[5]).count(EM) == MAX_SIGNATURES


def test_merge_notes() -> None:
    a, b, c = _signer(1), _signer(2), _signer(3)
    va, vb, vc = _verifier("a", a), _verifier("b", b), _verifier("c", c)
    body = format_checkpoint(Checkpoint("example.com/log", 3, ROOT))
    na, nb = sign_note(body, "a", a), sign_note(body, "b", b)
    nbc = add_signature(nb, "c", c)
    merged = merge_notes(na, nbc)
    assert verify_note(merged, [va, vb, vc], min_signatures=3) == (body, ("a", "b", "c"))
    assert merge_notes(merged, merged) == merged
    assert merge_notes(merged, na) == merged
    assert verify_note(merge_notes(nbc, na), [va, vb, vc])[1] == ("b", "c", "a")
    other = sign_note(format_checkpoint(Checkpoint("example.com/log", 4, ROOT)), "c", c)
    with pytest.raises(VerificationError) as err:
        merge_notes(na, other)
    assert err.value.code == "NOTE_MISMATCH"


# --------------------------------------------------------------------------- verification policy


def test_min_signatures() -> None:
    a, b = _signer(1), _signer(2)
    va, vb = _verifier("a", a), _verifier("b", b)
    note = add_signature(sign_note("x\n", "a", a), "b", b)
    assert verify_note(note, [va, vb], min_signatures=2)[1] == ("a", "b")
    with pytest.raises(VerificationError) as err:
        verify_note(note, [va, vb], min_signatures=3)
    assert err.value.code == "NOTE_UNVERIFIED"
    with pytest.raises(VerificationError):
        verify_note(note, [va], min_signatures=2)
    for bad in (0, -1):
        with pytest.raises(ValidationError):
            verify_note(note, [va], min_signatures=bad)


def test_ambiguous_verifiers() -> None:
    assert verify_note(GO_SIGNED, [PETER, PETER]) == (GO_TEXT, ("PeterNeumann",))
    with pytest.raises(ValidationError):
        verify_note(GO_SIGNED, ["PeterNeumann"])  # type: ignore[list-item]


def test_known_key_with_wrong_length_signature_fails() -> None:
    short = NoteSignature("PeterNeumann", PETER.key_hash, b"\x00" * 63)
    text = format_note(SignedNote(GO_TEXT, (short,)))
    with pytest.raises(VerificationError):
        verify_note(text, [PETER])
    # From an unknown key any length is carried along (e.g. post-quantum signatures).
    long = NoteSignature("pq.example", b"\xff\x00\x00\x01", b"\x07" * 2420)
    text = format_note(SignedNote(GO_TEXT, (long, parse_note(GO_SIGNED).signatures[0])))
    assert verify_note(text, [PETER])[1] == ("PeterNeumann",)


# --------------------------------------------------------------------------- properties

line_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc"), min_codepoint=0x20), min_size=1
)
checkpoints = st.builds(
    Checkpoint,
    origin=line_text,
    size=st.integers(0, MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(line_text, max_size=3).map(tuple),
)
key_names = st.text(
    alphabet=st.characters(
        exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), exclude_characters="+"
    ),
    min_size=1,
    max_size=20,
).filter(lambda s: not any(c.isspace() for c in s))
seeds = st.binary(min_size=32, max_size=32)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(cp=checkpoints, name=key_names, seed=seeds)
def test_sign_verify_round_trip(cp: Checkpoint, name: str, seed: bytes) -> None:
    body = format_checkpoint(cp)
    assert parse_checkpoint(body) == cp
    signer = SeedSigner(seed)
    note = sign_note(body, name, signer)
    assert format_note(parse_note(note)) == note
    v = parse_vkey(format_vkey(name, signer.public_key))
    got_body, names = verify_note(note, [v])
    assert (got_body, names) == (body, (name,))
    assert parse_checkpoint(got_body) == cp


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cp=checkpoints,
    n_keys=st.integers(1, 3),
    data=st.data(),
)
def test_any_single_byte_mutation_is_detected(
    cp: Checkpoint, n_keys: int, data: st.DataObject
) -> None:
    signers = [SeedSigner(bytes([i + 1]) * 32) for i in range(n_keys)]
    names = [f"log{i}.example" for i in range(n_keys)]
    body = format_checkpoint(cp)
    note = sign_note(body, names[0], signers[0])
    for name, signer in zip(names[1:], signers[1:], strict=True):
        note = add_signature(note, name, signer)
    verifiers = [_verifier(n, s) for n, s in zip(names, signers, strict=True)]
    raw = note.encode("utf-8")
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != raw[pos]), label="value")
    mutated = raw[:pos] + bytes([value]) + raw[pos + 1 :]
    _assert_rejected_or_different(mutated, verifiers, body)


def _assert_rejected_or_different(mutated: bytes, verifiers: list[NoteVerifier], body: str) -> None:
    try:
        text = mutated.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(ValidationError):
            parse_note(mutated)
        return
    try:
        got, _ = verify_note(text, verifiers, min_signatures=len(verifiers))
    except (ValidationError, VerificationError):
        return
    assert got != body


def test_every_single_byte_mutation_of_the_go_note_is_detected() -> None:
    raw = GO_DOUBLY_SIGNED.encode("utf-8")
    for pos in range(len(raw)):
        for delta in (0x01, 0x02, 0x03, 0x20, 0x80):
            mutated = raw[:pos] + bytes([raw[pos] ^ delta]) + raw[pos + 1 :]
            _assert_rejected_or_different(mutated, [PETER, ENOCH], GO_TEXT)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(), st.binary()))
def test_parsers_only_raise_validation_errors(text: str | bytes) -> None:
    for parse in (parse_note, parse_checkpoint, parse_vkey):
        with contextlib.suppress(ValidationError):
            parse(text)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from(
            ["", "0", "00", "1", "-1", "x", EM + " a AAAAAA==", "AAAA", "\u0661", "A" * 43 + "="]
        ),
        max_size=6,
    )
)
def test_checkpoint_parser_on_line_soup(lines: list[str]) -> None:
    body = "".join(line + "\n" for line in lines)
    try:
        cp = parse_checkpoint(body)
    except ValidationError:
        return
    assert format_checkpoint(cp) == body
