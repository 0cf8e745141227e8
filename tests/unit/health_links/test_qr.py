"""QR codes: the spec's numeric encoding and published QR; our SVGs scan with a third-party
reader (zxing-cpp) to the exact text, at the error correction level the specs ask for."""

from __future__ import annotations

import re

import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.errors import ValidationError
from careledger.health_links.link import LinkPayload, new_key, to_uri
from careledger.health_links.qr import (
    MAX_SHC_JWS_CHARS,
    parse_shc_numeric,
    qr_svg,
    shc_numeric,
)
from tests.support.qr_scan import rasterise, scan
from tests.support.vectors import vector_path

JWS = vector_path("shc", "example-00-d-jws.txt").read_text()
NUMERIC = vector_path("shc", "example-00-f-qr-code-numeric-value-0.txt").read_text()
_JWS_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# --- numeric encoding ---------------------------------------------------------------------------


def test_spec_example_numeric_text() -> None:
    assert shc_numeric(JWS) == NUMERIC
    assert parse_shc_numeric(NUMERIC) == JWS


def test_spec_worked_example_x_is_43() -> None:
    # "'X' is encoded as 43, since Ord('X') is 88, and 88-45 is 43"
    assert shc_numeric("X.X.X") == "shc:/43" + "01" + "43" + "01" + "43"


def test_spec_example_starts_as_the_spec_says() -> None:
    assert NUMERIC.startswith("shc:/56762909524320603460292437404460")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("shc:/1/2/5676", "SHC_CHUNKED"),
        ("shc:/567", "BAD_SHC"),  # odd number of digits
        ("shc:/56a6", "BAD_SHC"),
        ("shc:/", "BAD_SHC"),
        ("shc:/9999", "BAD_SHC"),  # beyond 'z'
        ("shc:/" + "56" * 10, "BAD_SHC"),  # not three segments
        ("shlink:/abc", "BAD_SHC"),
        ("5676", "BAD_SHC"),
    ],
)
def test_malformed_numeric_text_is_refused(text: str, code: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_shc_numeric(text)
    assert err.value.code == code


@pytest.mark.parametrize("jws", ["", "a.b", "a.b.c.d", "a.b.c=", "a+b.c.d", "é.a.b"])
def test_shc_numeric_refuses_non_jws(jws: str) -> None:
    with pytest.raises(ValidationError):
        shc_numeric(jws)


_SEGMENT = st.text(alphabet=_JWS_ALPHABET, min_size=1, max_size=60)


@given(st.tuples(_SEGMENT, _SEGMENT, _SEGMENT).map(".".join))
def test_numeric_round_trip(jws: str) -> None:
    text = shc_numeric(jws)
    assert text.startswith("shc:/") and text[5:].isdigit() and len(text) == 5 + 2 * len(jws)
    assert parse_shc_numeric(text) == jws
    assert parse_shc_numeric("SHC:/" + text[5:]) == jws


@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes(text: str) -> None:
    code = None
    try:
        parse_shc_numeric(text)
    except ValidationError as err:
        code = err.code
    assert code in (None, "BAD_SHC", "SHC_CHUNKED")


# --- drawing and scanning -----------------------------------------------------------------------


def test_spec_published_qr_scans_to_the_numeric_text() -> None:
    # Proves the reader and the rasteriser before they judge our own drawings.
    found = scan(vector_path("shc", "example-00-g-qr-code-0.svg").read_text())
    assert found.text == NUMERIC
    assert found.ec_level == "L"


def test_card_qr_scans_to_the_spec_text_with_two_segments_at_level_l() -> None:
    svg = qr_svg(NUMERIC, numeric_shc=True)
    found = scan(svg)
    assert found.text == NUMERIC
    assert parse_shc_numeric(found.text) == JWS
    assert found.ec_level == "L"
    assert "<title>SMART Health Card</title>" in svg


def test_card_qr_is_module_for_module_the_spec_published_qr() -> None:
    # Same segments (byte "shc:/", then numeric), level L, version 18 and mask as the
    # reference generator's drawing of example 0.
    reference = rasterise(vector_path("shc", "example-00-g-qr-code-0.svg").read_text())
    ours = rasterise(qr_svg(NUMERIC, numeric_shc=True))
    assert ours.shape == reference.shape
    assert ours.tobytes() == reference.tobytes()


def test_longest_card_fits_version_22_and_one_more_character_does_not() -> None:
    longest = "a" * 10 + "." + "b" * (MAX_SHC_JWS_CHARS - 22) + "." + "c" * 10
    assert len(longest) == MAX_SHC_JWS_CHARS
    found = scan(qr_svg(shc_numeric(longest), numeric_shc=True))
    assert parse_shc_numeric(found.text) == longest
    with pytest.raises(ValidationError) as err:
        qr_svg(shc_numeric(longest + "c"), numeric_shc=True)
    assert err.value.code == "SHC_TOO_LARGE"


def test_link_qr_scans_to_the_uri_at_level_m() -> None:
    payload = LinkPayload(
        "https://shl.example.org/m/I91rhba3VsuGXGchcnr6VHlQFKxfE28kuZ0ssbEuxno",
        new_key(bytes(range(32))),
        flags="LP",
        label="Back-to-school immunizations",
    )
    uri = to_uri(payload, viewer="https://viewer.example/")
    svg = qr_svg(uri)
    found = scan(svg)
    assert found.text == uri
    assert found.ec_level == "M"
    assert found.content_type == zxingcpp.ContentType.Text
    assert "<title>SMART Health Link</title>" in svg


def test_svg_is_standalone_with_a_white_ground_and_a_readable_size() -> None:
    svg = qr_svg(NUMERIC, numeric_shc=True, title='Card <for> "Ann" & co')
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert '<title>Card &lt;for&gt; "Ann" &amp; co</title>' in svg
    width = re.search(r'<svg[^>]*\swidth="([0-9]+)"', svg)
    assert width is not None and 300 <= int(width.group(1)) <= 600
    assert '<path fill="#fff"' in svg


def test_a_card_in_byte_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="numeric_shc"):
        qr_svg(NUMERIC)
    with pytest.raises(ValidationError):
        qr_svg("")
    with pytest.raises(ValidationError):
        qr_svg("shc:/1/2/5676", numeric_shc=True)


@settings(max_examples=15, deadline=None)
@given(st.tuples(_SEGMENT, _SEGMENT, _SEGMENT).map(".".join))
def test_any_card_draws_and_scans_back(jws: str) -> None:
    found = scan(qr_svg(shc_numeric(jws), numeric_shc=True))
    assert parse_shc_numeric(found.text) == jws
