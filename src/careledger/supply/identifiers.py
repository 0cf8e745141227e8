"""GS1 identifiers for drug traceability: check digits, EPC URNs and GS1 Digital Link URIs.

Pure: no I/O, clock or randomness. Three identifier types are modelled as values, the ones a
pharmaceutical supply chain (DSCSA / EU FMD) moves and records:

* :class:`SGTIN` - a serialised trade item (GTIN AI 01 + serial AI 21, with lot AI 10 and
  expiry AI 17 carried alongside; lot and expiry are *not* part of the EPC identity);
* :class:`SSCC` - a logistic unit (AI 00);
* :class:`SGLN` - a location (GLN AI 414 + extension AI 254, ``"0"`` meaning none).

Two textual forms are read and written: EPC pure-identity URNs (GS1 EPC Tag Data Standard 2.x,
``urn:epc:id:sgtin:0614141.812345.6789``) and GS1 Digital Link URIs (DL 1.x, any host,
``https://id.gs1.org/01/80614141123458/21/6789``). :func:`normalise_epc` maps either form of
any GS1 key with an EPC or DL form (GRAI, GIAI, GSRN, GDTI, CPI, ITIP, ... and the class-level
LGTIN / EPC id patterns too) to the canonical Digital Link that EPCIS 2.0 / CBV 2.0 event
hashing uses: ``https://id.gs1.org/{key AI}/{key}[/{qualifier AI}/{value}]``, check digit
computed, only the qualifier that belongs to the EPC identity kept, no query string.

Error codes (all :class:`~careledger.errors.ValidationError`, HTTP 400): ``MALFORMED_DIGITS``,
``MALFORMED_GTIN``, ``MALFORMED_GLN``, ``MALFORMED_SSCC``, ``BAD_CHECK_DIGIT``,
``MALFORMED_SERIAL``, ``MALFORMED_LOT``, ``MALFORMED_EXPIRY``, ``MALFORMED_EXTENSION``,
``MALFORMED_EPC``, ``MALFORMED_DIGITAL_LINK``, ``UNSUPPORTED_IDENTIFIER`` (a valid GS1 key
that is not one of the three modelled types), ``BAD_COMPANY_PREFIX_LENGTH``. Identifiers are
not PHI, so messages quote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit

from careledger.errors import ValidationError

__all__ = [
    "SGLN",
    "SGTIN",
    "SSCC",
    "EpcObject",
    "gs1_check_digit",
    "normalise_epc",
    "parse_digital_link",
    "parse_epc_urn",
    "to_digital_link",
    "to_epc_urn",
    "validate_gln",
    "validate_gtin",
    "validate_sscc",
]

CANONICAL_BASE = "https://id.gs1.org"

_DIGITS = re.compile(r"[0-9]+")
# GS1 AI encodable character set 82 (General Specifications figure 7.11-1).
_CSET82 = re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]*")
# GS1 AI encodable character set 39 (used by CPI, AI 8010).
_CSET39 = re.compile(r"[#\-/0-9A-Z]*")
# A component of an EPC URN as written: TDS "safe" characters or a %-escape.
_URN_COMPONENT = re.compile(r"(?:[A-Za-z0-9!'()*+,\-.:;=_]|%[0-9A-Fa-f]{2})*")
# Characters that TDS requires to be %-escaped in an EPC URN.
_URN_ESCAPED = {c: f"%{ord(c):02X}" for c in '"%&/<>?#'}

# --------------------------------------------------------------------------------------------
# Check digits and keys


def _is_digits(text: str) -> bool:
    return _DIGITS.fullmatch(text) is not None


def gs1_check_digit(digits: str) -> str:
    """The GS1 mod-10 check digit of ``digits`` (the key without its check digit).

    Weights 3, 1, 3, ... from the rightmost digit; the check digit brings the sum to a multiple
    of ten (GS1 General Specifications 7.9.1).
    """
    if not _is_digits(digits):
        raise ValidationError(f"not a digit string: {digits!r}", code="MALFORMED_DIGITS")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str(-total % 10)


def _check(text: str, kind: str) -> None:
    if gs1_check_digit(text[:-1]) != text[-1]:
        raise ValidationError(f"{kind} {text} has a bad check digit", code="BAD_CHECK_DIGIT")


def _validate_key(text: object, kind: str, lengths: tuple[int, ...]) -> str:
    if isinstance(text, str) and len(text) <= 18:
        return _validate_str_key(text, kind, lengths)
    return _validate_uncached(text, kind, lengths)


@lru_cache(maxsize=16384)
def _validate_str_key(text: str, kind: str, lengths: tuple[int, ...]) -> str:
    """Keys repeat (a GTIN in every unit, a GLN in every event): checked once each."""
    return _validate_uncached(text, kind, lengths)


def _validate_uncached(text: object, kind: str, lengths: tuple[int, ...]) -> str:
    if not isinstance(text, str) or not _is_digits(text) or len(text) not in lengths:
        want = "/".join(str(n) for n in lengths)
        raise ValidationError(
            f"{kind} must be {want} digits, got {text!r}", code=f"MALFORMED_{kind}"
        )
    _check(text, kind)
    return text


def validate_gtin(text: str) -> str:
    """Validate a GTIN-8/12/13/14; return it as the canonical GTIN-14 (zero-padded)."""
    return _validate_key(text, "GTIN", (8, 12, 13, 14)).zfill(14)


def validate_gln(text: str) -> str:
    """Validate a 13-digit GLN and return it."""
    return _validate_key(text, "GLN", (13,))


def validate_sscc(text: str) -> str:
    """Validate an 18-digit SSCC and return it."""
    return _validate_key(text, "SSCC", (18,))


def _validate_x(value: object, code: str, what: str, max_len: int = 20) -> str:
    """An AI value of CSET 82, 1..max_len characters (AI 10, 21, 22, 254, ...)."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= max_len
        or _CSET82.fullmatch(value) is None
    ):
        raise ValidationError(
            f"{what} must be 1..{max_len} characters of GS1 CSET 82, got {value!r}", code=code
        )
    return value


_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _validate_expiry(value: object) -> str:
    """AI 17: YYMMDD; DD may be 00 (= last day of the month)."""
    if isinstance(value, str) and len(value) == 6 and _is_digits(value):
        yy, mm, dd = int(value[:2]), int(value[2:4]), int(value[4:])
        # The GS1 century window (7.12) spans 2000, so YY % 4 == 0 <=> leap year.
        if 1 <= mm <= 12 and dd <= (28 if mm == 2 and yy % 4 else _DAYS[mm - 1]):
            return value
    raise ValidationError(f"expiry must be YYMMDD, got {value!r}", code="MALFORMED_EXPIRY")


# --------------------------------------------------------------------------------------------
# The three modelled identifiers


@dataclass(frozen=True)
class SGTIN:
    """A serialised trade item. ``gtin`` is stored as GTIN-14 (shorter GTINs are padded)."""

    gtin: str
    serial: str
    lot: str | None = None
    expiry: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gtin", validate_gtin(self.gtin))
        _validate_x(self.serial, "MALFORMED_SERIAL", "serial (AI 21)")
        if self.lot is not None:
            _validate_x(self.lot, "MALFORMED_LOT", "lot (AI 10)")
        if self.expiry is not None:
            _validate_expiry(self.expiry)


@dataclass(frozen=True)
class SSCC:
    """A serial shipping container code (18 digits)."""

    sscc: str

    def __post_init__(self) -> None:
        validate_sscc(self.sscc)


@dataclass(frozen=True)
class SGLN:
    """A location: GLN plus extension (AI 254); ``"0"`` means "no extension"."""

    gln: str
    extension: str = "0"

    def __post_init__(self) -> None:
        validate_gln(self.gln)
        _validate_x(self.extension, "MALFORMED_EXTENSION", "GLN extension (AI 254)")


EpcObject = SGTIN | SSCC | SGLN


# --------------------------------------------------------------------------------------------
# The internal form both syntaxes parse into: a primary key AI, its value, and qualifiers.


@dataclass(frozen=True)
class _Key:
    ai: str
    value: str
    qualifiers: tuple[tuple[str, str], ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()  # DL query data attributes (10, 17)

    def qualifier(self, ai: str) -> str | None:
        return next((v for a, v in self.qualifiers if a == ai), None)


# Which qualifier belongs to the EPC identity of each key (first present wins); the rest
# (CPV 22, a lot next to a serial, ...) are dropped from the canonical form.
_IDENTITY_QUALIFIERS: dict[str, tuple[str, ...]] = {
    "01": ("21", "235", "10"),
    "8006": ("21", "10"),
    "414": ("254",),
    "8010": ("8011",),
}


def _canonical(key: _Key, base: str = CANONICAL_BASE) -> str:
    out = f"{base.rstrip('/')}/{key.ai}/{quote(key.value, safe='')}"
    for ai in _IDENTITY_QUALIFIERS.get(key.ai, ()):
        value = key.qualifier(ai)
        if value is not None and not (ai == "254" and value == "0"):
            out += f"/{ai}/{quote(value, safe='')}"
            break
    return out


def _to_object(key: _Key) -> EpcObject:
    if key.ai == "00":
        return SSCC(key.value)
    if key.ai == "414":
        return SGLN(key.value, key.qualifier("254") or "0")
    if key.ai == "01" and key.qualifier("21") is not None:
        attrs = dict(key.attributes)
        lot = key.qualifier("10")
        if lot is not None and attrs.get("10", lot) != lot:
            raise ValidationError(
                f"lot given twice with different values: {lot!r}, {attrs['10']!r}",
                code="MALFORMED_DIGITAL_LINK",
            )
        return SGTIN(key.value, key.qualifier("21") or "", lot or attrs.get("10"), attrs.get("17"))
    raise ValidationError(
        f"{_canonical(key)} is a valid GS1 identifier but not an SGTIN, SSCC or SGLN",
        code="UNSUPPORTED_IDENTIFIER",
    )


def _from_object(obj: EpcObject) -> _Key:
    if isinstance(obj, SGTIN):
        attrs = [("10", obj.lot)] if obj.lot is not None else []
        attrs += [("17", obj.expiry)] if obj.expiry is not None else []
        return _Key("01", obj.gtin, (("21", obj.serial),), tuple(attrs))
    if isinstance(obj, SSCC):
        return _Key("00", obj.sscc)
    if isinstance(obj, SGLN):
        return _Key("414", obj.gln, (("254", obj.extension),))
    raise ValidationError(f"not an SGTIN, SSCC or SGLN: {obj!r}", code="UNSUPPORTED_IDENTIFIER")


# --------------------------------------------------------------------------------------------
# EPC URNs (Tag Data Standard 2.x, pure identity, id patterns, LGTIN class)


def _bad_epc(text: str, why: str) -> ValidationError:
    return ValidationError(f"malformed EPC URN {text!r}: {why}", code="MALFORMED_EPC")


def _urn_unescape(raw: str, text: str) -> str:
    if _URN_COMPONENT.fullmatch(raw) is None:
        raise _bad_epc(text, f"illegal character in {raw!r}")
    return unquote(raw)


def _urn_escape(value: str) -> str:
    return "".join(_URN_ESCAPED.get(c, c) for c in value)


def _with_cd(digits: str) -> str:
    return digits + gs1_check_digit(digits)


class _UrnReader:
    """Splits and checks the dotted body of one URN; ``text`` is kept for error messages."""

    def __init__(self, text: str, body: str, n: int) -> None:
        self.text = text
        self.parts = body.split(".", n - 1)
        if len(self.parts) != n:
            raise _bad_epc(text, f"expected {n} dot-separated components")

    def cp(self) -> str:
        """The GS1 Company Prefix: 6..12 digits."""
        cp = self.parts[0]
        if not (_is_digits(cp) and 6 <= len(cp) <= 12):
            raise _bad_epc(self.text, "company prefix must be 6..12 digits")
        return cp

    def cp_and(self, index: int, total: int) -> str:
        """Company prefix + the numeric component at ``index``; ``total`` digits together."""
        cp, ref = self.cp(), self.parts[index]
        if ref and not _is_digits(ref):
            raise _bad_epc(self.text, f"reference {ref!r} must be numeric")
        if len(cp) + len(ref) != total:
            raise _bad_epc(self.text, f"company prefix + reference must be {total} digits")
        return cp + ref

    def gtin(self) -> str:
        self.cp_and(1, 13)
        ind_item = self.parts[1]
        if not ind_item:
            raise _bad_epc(self.text, "missing indicator digit")
        return _with_cd(ind_item[0] + self.parts[0] + ind_item[1:])

    def text_part(self, index: int, max_len: int, charset: re.Pattern[str] = _CSET82) -> str:
        value = _urn_unescape(self.parts[index], self.text)
        if len(value) > max_len or charset.fullmatch(value) is None:
            raise _bad_epc(self.text, f"component {value!r} is not a valid GS1 value")
        return value

    def x20(self, index: int) -> str:
        value = self.text_part(index, 20)
        if not value:
            raise _bad_epc(self.text, "empty serial")
        return value


def _urn_key(text: str, kind: str, scheme: str, body: str) -> _Key:
    pattern = kind == "idpat"
    if kind == "class":
        if scheme != "lgtin":
            raise _bad_epc(text, f"unsupported EPC class {scheme!r}")
        r = _UrnReader(text, body, 3)
        return _Key("01", r.gtin(), (("10", r.x20(2)),))
    counts = {"sgtin": 3, "sscc": 2, "sgln": 3, "grai": 3, "giai": 2, "gsrn": 2, "gsrnp": 2,
              "gdti": 3, "cpi": 3, "ginc": 2, "gsin": 2, "itip": 5, "upui": 3, "pgln": 2,
              "sgcn": 3}  # fmt: skip
    if scheme not in counts:
        raise _bad_epc(text, f"unsupported EPC scheme {scheme!r}")
    r = _UrnReader(text, body, counts[scheme])
    # Only a single trailing wildcard maps to a Digital Link (the class of the identifier).
    if pattern and (r.parts[-1] != "*" or "*" in r.parts[:-1] or scheme not in _PATTERN_SCHEMES):
        raise _bad_epc(text, "only patterns with a single trailing '*' are supported")
    last = None if pattern else r.parts[-1]
    if scheme == "sgtin":
        return _Key("01", r.gtin(), () if pattern else (("21", r.x20(2)),))
    if scheme == "upui":
        return _Key("01", r.gtin(), () if pattern else (("235", r.text_part(2, 28)),))
    if scheme == "itip":
        piece_total = r.parts[2] + r.parts[3]
        if not (_is_digits(piece_total) and len(piece_total) == 4):
            raise _bad_epc(text, "piece and total must be 2 digits each")
        value = r.gtin() + piece_total
        return _Key("8006", value, () if pattern else (("21", r.x20(4)),))
    if scheme == "sscc":
        r.cp_and(1, 17)
        ext_ref = r.parts[1]
        return _Key("00", _with_cd(ext_ref[:1] + r.parts[0] + ext_ref[1:]))
    if scheme == "sgln":
        return _Key("414", _with_cd(r.cp_and(1, 12)), (("254", r.x20(2)),))
    if scheme in ("pgln", "gsrn", "gsrnp", "gsin"):
        ai, total = {"pgln": ("417", 12), "gsrn": ("8018", 17), "gsrnp": ("8017", 17),
                     "gsin": ("402", 16)}[scheme]  # fmt: skip
        return _Key(ai, _with_cd(r.cp_and(1, total)))
    if scheme == "grai":
        serial = "" if last is None else r.text_part(2, 16)
        return _Key("8003", _with_cd("0" + r.cp_and(1, 12)) + serial)
    if scheme == "gdti":
        serial = "" if last is None else r.text_part(2, 17)
        return _Key("253", _with_cd(r.cp_and(1, 12)) + serial)
    if scheme == "sgcn":
        serial = "" if last is None else r.parts[2]
        if serial and not (_is_digits(serial) and len(serial) <= 12):
            raise _bad_epc(text, "SGCN serial must be up to 12 digits")
        return _Key("255", _with_cd(r.cp_and(1, 12)) + serial)
    if scheme in ("giai", "ginc"):
        value = r.cp() + r.text_part(1, 30 - len(r.parts[0]))
        return _Key("8004" if scheme == "giai" else "401", value)
    # cpi
    value = r.cp() + r.text_part(1, 30 - len(r.parts[0]), _CSET39)
    if last is None:
        return _Key("8010", value)
    if not (_is_digits(last) and 1 <= len(last) <= 12):
        raise _bad_epc(text, "CPI serial must be 1..12 digits")
    return _Key("8010", value, (("8011", last),))


_PATTERN_SCHEMES = frozenset({"sgtin", "grai", "gdti", "sgcn", "cpi", "itip", "upui"})
_URN = re.compile(r"(?i:urn:epc:(id|idpat|class)):([a-z]+):(.*)", re.DOTALL)


# An event names an EPC several times over (hash, index, unit op); parsing is pure, so the
# last few thousand parses are kept. Errors are not cached (lru_cache does not keep raises).
@lru_cache(maxsize=16384)
def _parse_urn(text: str) -> _Key:
    match = _URN.fullmatch(text)
    if match is None:
        raise _bad_epc(text, "not an urn:epc:id / idpat / class URN")
    kind, scheme, body = match.group(1).lower(), match.group(2), match.group(3)
    return _urn_key(text, kind, scheme, body)


def parse_epc_urn(text: str) -> EpcObject:
    """Parse an EPC pure-identity URN of an SGTIN, SSCC or SGLN (TDS 2.x).

    ``%``-escapes in serials and extensions are decoded. Other well-formed EPC schemes raise
    ``UNSUPPORTED_IDENTIFIER`` (use :func:`normalise_epc` for those).
    """
    if not isinstance(text, str) or not text.lower().startswith("urn:epc:id:"):
        raise _bad_epc(str(text), "not an urn:epc:id: pure-identity URN")
    return _to_object(_parse_urn(text))


def to_epc_urn(obj: EpcObject, company_prefix_length: int) -> str:
    """The EPC pure-identity URN of ``obj``; the GS1 Company Prefix length places the dot.

    Lot and expiry are not part of an SGTIN's EPC and are not written.
    """
    cpl = company_prefix_length
    if isinstance(cpl, bool) or not isinstance(cpl, int) or not 6 <= cpl <= 12:
        raise ValidationError(
            f"company prefix length must be 6..12, got {cpl!r}", code="BAD_COMPANY_PREFIX_LENGTH"
        )
    if isinstance(obj, SGTIN):
        g = obj.gtin
        serial = _urn_escape(obj.serial)
        return f"urn:epc:id:sgtin:{g[1 : 1 + cpl]}.{g[0]}{g[1 + cpl : 13]}.{serial}"
    if isinstance(obj, SSCC):
        s = obj.sscc
        return f"urn:epc:id:sscc:{s[1 : 1 + cpl]}.{s[0]}{s[1 + cpl : 17]}"
    if isinstance(obj, SGLN):
        g = obj.gln
        return f"urn:epc:id:sgln:{g[:cpl]}.{g[cpl:12]}.{_urn_escape(obj.extension)}"
    raise ValidationError(f"not an SGTIN, SSCC or SGLN: {obj!r}", code="UNSUPPORTED_IDENTIFIER")


# --------------------------------------------------------------------------------------------
# GS1 Digital Link URIs (1.x)

# DL 1.x short names (deprecated in 1.2 but still met in the wild) -> AI.
_SHORT_NAMES = {
    "gtin": "01", "itip": "8006", "sscc": "00", "gln": "414", "party": "417", "glnx": "254",
    "ser": "21", "lot": "10", "cpv": "22", "gdti": "253", "gcn": "255", "ginc": "401",
    "gsin": "402", "grai": "8003", "giai": "8004", "gsrn": "8018", "gsrnp": "8017",
    "cpid": "8010", "cpsn": "8011", "srin": "8019",
}  # fmt: skip

# Primary keys and their permitted qualifier sequences (syntax dictionary "dlpkey=").
_DLPKEY: dict[str, tuple[tuple[str, ...], ...]] = {
    "00": (), "01": (("22", "10", "21"), ("235",)), "253": (), "255": (), "401": (),
    "402": (), "414": (("254",), ("7040",)), "417": (("7040",),), "8003": (),
    "8004": (("7040",),), "8006": (("22", "10", "21"),), "8010": (("8011",),),
    "8017": (("8019",),), "8018": (("8019",),),
}  # fmt: skip
_QUALIFIER_AIS = frozenset({"10", "21", "22", "235", "254", "7040", "8011", "8019"})


def _bad_dl(uri: str, why: str) -> ValidationError:
    return ValidationError(
        f"malformed GS1 Digital Link {uri!r}: {why}", code="MALFORMED_DIGITAL_LINK"
    )


def _x(value: str, max_len: int, uri: str, charset: re.Pattern[str] = _CSET82) -> str:
    if not 1 <= len(value) <= max_len or charset.fullmatch(value) is None:
        raise _bad_dl(uri, f"value {value!r} is not 1..{max_len} valid characters")
    return value


def _n_csum(value: str, length: int, kind: str) -> str:
    return _validate_key(value, kind, (length,))


def _dl_key_value(ai: str, value: str, uri: str) -> str:
    if ai == "01":
        return validate_gtin(value)
    if ai == "00":
        return validate_sscc(value)
    if ai in ("414", "417"):
        return validate_gln(value)
    if ai in ("8017", "8018"):
        return _n_csum(value, 18, "GSRN")
    if ai == "402":
        return _n_csum(value, 17, "GSIN")
    if ai in ("253", "255"):
        _n_csum(value[:13], 13, "GDTI" if ai == "253" else "GCN")
        rest = value[13:]
        if rest and (
            len(rest) > (17 if ai == "253" else 12)
            or (_CSET82 if ai == "253" else _DIGITS).fullmatch(rest) is None
        ):
            raise _bad_dl(uri, f"bad serial component in {value!r}")
        return value
    if ai == "8003":
        if value[:1] != "0":
            raise _bad_dl(uri, "a GRAI starts with a 0 digit")
        _n_csum(value[1:14], 13, "GRAI")
        if len(value) > 14:
            _x(value[14:], 16, uri)
        return value
    if ai == "8006":
        if not (_is_digits(value) and len(value) == 18):
            raise _bad_dl(uri, f"an ITIP is 18 digits, got {value!r}")
        _n_csum(value[:14], 14, "GTIN")
        piece, total = value[14:16], value[16:]
        if not (_is_digits(piece + total) and 1 <= int(piece) <= int(total)):
            raise _bad_dl(uri, f"bad piece/total in ITIP {value!r}")
        return value
    if ai in ("401", "8004"):
        return _x(value, 30, uri)
    # 8010
    return _x(value, 30, uri, _CSET39)


def _dl_qualifier_value(ai: str, value: str, uri: str) -> str:
    if ai == "8011":
        if not (_is_digits(value) and len(value) <= 12):
            raise _bad_dl(uri, f"CPI serial must be 1..12 digits, got {value!r}")
        return value
    if ai == "8019":
        if not (_is_digits(value) and len(value) <= 10):
            raise _bad_dl(uri, f"SRIN must be 1..10 digits, got {value!r}")
        return value
    if ai == "7040":
        if len(value) != 4:
            raise _bad_dl(uri, f"AI 7040 must be 4 characters, got {value!r}")
        return _x(value, 4, uri)
    return _x(value, 28 if ai == "235" else 20, uri)


_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _pct_decode(segment: str, uri: str) -> str:
    if _PCT.search(segment):
        raise _bad_dl(uri, f"bad percent-encoding in {segment!r}")
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise _bad_dl(uri, f"percent-encoding in {segment!r} is not UTF-8") from None


def _in_order(ais: list[str], sequences: tuple[tuple[str, ...], ...]) -> bool:
    if not ais:
        return True
    for seq in sequences:
        positions = [seq.index(a) if a in seq else -1 for a in ais]
        if -1 not in positions and positions == sorted(set(positions)):
            return True
    return False


@lru_cache(maxsize=16384)
def _parse_dl(uri: str) -> _Key:
    if not isinstance(uri, str):
        raise _bad_dl(repr(uri), "not a string")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise _bad_dl(uri, str(exc)) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or parts.fragment:
        raise _bad_dl(uri, "must be an http(s) URI with a host and no fragment")
    segments = parts.path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()  # tolerate one trailing slash
    if any(s == "" for s in segments):
        raise _bad_dl(uri, "empty path segment")
    names = [_SHORT_NAMES.get(s, s) for s in segments]
    # Walk (AI, value) pairs from the right until the primary key; anything left is a prefix.
    qualifiers: list[tuple[str, str]] = []
    i = len(segments) - 2
    while i >= 0 and names[i] not in _DLPKEY:
        if names[i] not in _QUALIFIER_AIS:
            raise _bad_dl(uri, f"{segments[i]!r} is not a GS1 key or key qualifier")
        qualifiers.insert(0, (names[i], _pct_decode(segments[i + 1], uri)))
        i -= 2
    if i < 0:
        raise _bad_dl(uri, "no GS1 primary key in the path")
    ai = names[i]
    q_ais = [a for a, _ in qualifiers]
    if not _in_order(q_ais, _DLPKEY[ai]):
        raise _bad_dl(uri, f"qualifiers {q_ais} not allowed (or out of order) after AI {ai}")
    value = _dl_key_value(ai, _pct_decode(segments[i + 1], uri), uri)
    checked = tuple((a, _dl_qualifier_value(a, v, uri)) for a, v in qualifiers)
    # RFC 3986 query: '+' is a literal plus (a CSET 82 character), not a space.
    query = [p.partition("=") for p in parts.query.split("&") if p]
    attributes = tuple((k, _pct_decode(v, uri)) for k, _, v in query if k in ("10", "17"))
    if len({k for k, _ in attributes}) != len(attributes):
        raise _bad_dl(uri, "data attribute given twice")
    return _Key(ai, value, checked, attributes)


def parse_digital_link(uri: str) -> EpcObject:
    """Parse a GS1 Digital Link URI (any host, any path prefix) into an SGTIN, SSCC or SGLN.

    SGTIN: ``/01/{gtin}[/22/{cpv}][/10/{lot}]/21/{serial}`` with optional ``?10=`` (if the path
    has no lot) and ``?17=`` (expiry); SSCC: ``/00/{sscc}``; SGLN: ``/414/{gln}[/254/{ext}]``.
    DL 1.x short names (``/gtin/``, ``/ser/``, ``/lot/``, ...) are accepted; other query
    parameters are ignored.
    """
    return _to_object(_parse_dl(uri))


def to_digital_link(obj: EpcObject, base: str = CANONICAL_BASE) -> str:
    """The GS1 Digital Link of ``obj``: ``{base}/01/{gtin14}/21/{serial}?10={lot}&17={exp}``.

    The query string appears only when lot or expiry is present (AI 10 and 17 are both
    permitted DL data attributes). Values are percent-encoded (RFC 3986 unreserved kept).
    """
    key = _from_object(obj)
    out = _canonical(key, base)
    if key.attributes:
        out += "?" + "&".join(f"{a}={quote(v, safe='')}" for a, v in key.attributes)
    return out


def normalise_epc(text: str) -> str:
    """Any EPC URN or GS1 Digital Link -> the canonical Digital Link of its EPC identity.

    This is the EPCIS 2.0 / CBV 2.0 event-hash normalisation: host ``id.gs1.org``, numeric
    AIs, GTIN-14, check digits computed (and verified on input), only the identity qualifier
    (serial, or else lot / TPX for a GTIN), no query string.
    """
    if not isinstance(text, str):
        raise _bad_epc(repr(text), "not a string")
    if text[:4].lower() == "urn:":
        return _canonical(_parse_urn(text))
    return _canonical(_parse_dl(text))


# --------------------------------------------------------------------------------------------
# GS1 element strings, as barcode scanners send them: "(01)…(21)…" or FNC1-separated raw data


GS = "\x1d"  # FNC1 in a scanned DataMatrix's data: ends a variable-length element
_FIXED = {"01": 14, "17": 6, "00": 18, "414": 13}
_VARIABLE = {"10": 20, "21": 20, "254": 20}
_BRACKETED = re.compile(r"\((\d{2,4})\)([^()]+)")


def parse_element_string(text: str) -> dict[str, str]:
    """AI -> value of a GS1 element string (AIs 00, 01, 10, 17, 21, 254, 414).

    Accepts the human-readable form with parentheses and the raw form a scanner emits
    (optional symbology identifier such as ``]d2``, FNC1 as the GS character).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("an element string is needed", code="MALFORMED_ELEMENT_STRING")
    text = text.strip()
    if text.startswith("("):
        pairs = _BRACKETED.findall(text)
        if "".join(f"({a}){v}" for a, v in pairs) != text:
            raise ValidationError("not a GS1 element string", code="MALFORMED_ELEMENT_STRING")
        for ai, value in pairs:
            fixed, limit = _FIXED.get(ai), _VARIABLE.get(ai)
            if (fixed is None and limit is None) or (fixed is not None and len(value) != fixed):
                raise ValidationError(
                    f"AI {ai} is not supported here", code="MALFORMED_ELEMENT_STRING"
                )
            if limit is not None and len(value) > limit:
                raise ValidationError(f"AI {ai} is too long", code="MALFORMED_ELEMENT_STRING")
        return dict(pairs)
    if text.startswith("]"):
        text = text[3:]  # symbology identifier, e.g. ]d2 (DataMatrix) or ]C1 (GS1-128)
    out: dict[str, str] = {}
    at = 0
    while at < len(text):
        if text[at] == GS:
            at += 1
            continue
        ai = next(
            (a for a in ("414", "254", "00", "01", "10", "17", "21") if text.startswith(a, at)),
            None,
        )
        if ai is None:
            raise ValidationError(
                f"unsupported application identifier at position {at}",
                code="MALFORMED_ELEMENT_STRING",
            )
        at += len(ai)
        if ai in _FIXED:
            value = text[at : at + _FIXED[ai]]
            if len(value) != _FIXED[ai]:
                raise ValidationError(f"AI {ai} is too short", code="MALFORMED_ELEMENT_STRING")
            at += _FIXED[ai]
        else:
            end = text.find(GS, at)
            end = len(text) if end < 0 else end
            value = text[at:end]
            if not 0 < len(value) <= _VARIABLE[ai]:
                raise ValidationError(f"AI {ai} has a bad length", code="MALFORMED_ELEMENT_STRING")
            at = end
        out[ai] = value
    return out
