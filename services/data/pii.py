"""Scrubbing personally identifiable information (PII) out of training text.

``scrub(text)`` replaces every hit with a typed placeholder (``<EMAIL>``, ``<PHONE>``, ...)
and counts the hits per kind. The kinds, in the order they run (``KINDS``):

- **URL_CREDENTIALS**: the ``user:password`` of a URL such as ``https://user:pass@host/``;
  scheme and host stay (``https://<URL_CREDENTIALS>@host/``).
- **EMAIL**: ``local@domain.tld`` in Latin letters, accented ones included (plus tags, dots and
  subdomains too).
- **IBAN**: two capital letters, two check digits and the account, compact or in groups of
  four; the country must be in the SWIFT IBAN registry with the length it gives, and the
  ISO 13616 mod-97 check must hold.
- **CREDIT_CARD**: 13 to 19 digits, optionally split by single spaces or dashes, starting as
  the card networks do (2 to 6) and passing the Luhn checksum.
- **US_SSN**: ``NNN-NN-NNNN`` outside the ranges never issued (area 000, 666 or 9xx, group
  00, serial 0000).
- **IP_ADDRESS**: IPv4 dotted quads (each part 0-255, not part of a longer dotted run such as
  a version number) and IPv6 as the stdlib ``ipaddress`` parses it; loopback and unspecified
  addresses (``127.0.0.1``, ``0.0.0.0``, ``::1``, ``::``) are not personal and stay.
- **MAC_ADDRESS**: six hex pairs split by ``:`` or ``-`` (the same one throughout).
- **PHONE**: found by ``phonenumbers`` (libphonenumber's matcher) with the US as the default
  region: ``+``-prefixed international numbers of any country, and national numbers read as
  US ones. A match is kept when libphonenumber calls it valid, or when it is a possible US
  number written in the usual NANP shape (``(555) 123-4567``, ``555-123-4567``), since the
  fictional 555 numbers are not "valid" but are written exactly like real ones.

Order matters: each kind's hits are replaced before the next kind runs, so an IBAN's or a
card's digits are never seen again as a phone number, and a URL's credentials never as an
e-mail. Placeholders match no kind, and the passes repeat until one finds nothing, so scrubbing
scrubbed text finds nothing.

Speed: text with neither a digit nor an ``@`` returns at once; the digit kinds are plain
regular expressions plus a checksum on candidates; ``phonenumbers`` (by far the slowest
step) runs only when the text has at least 7 digits in a row, separated by at most a few
non-word characters, which every phone number it can find has.

See ``NOT_DETECTED`` for what is left in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import phonenumbers

KINDS: tuple[str, ...] = (
    "URL_CREDENTIALS",
    "EMAIL",
    "IBAN",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "PHONE",
)

NOT_DETECTED: str = (
    "PII scrubbing finds only what has a fixed, checkable shape. It does not detect personal names, "
    "postal addresses, dates (dates of birth included), ages, usernames or social media handles, "
    "passwords, API keys and other secrets (except a password in a URL's user:password@), "
    "identity numbers other than US Social Security numbers written NNN-NN-NNNN (passports, "
    "driving licences, national IDs, tax and health insurance numbers, and free-form customer, "
    "order or account IDs), bank account numbers that are not IBANs, card numbers that fail the "
    "Luhn check or are split other than by single spaces or dashes, phone numbers written in another "
    "country's national format without their +country code, 7-digit local numbers without an area "
    "code, numbers spelled with letters or in words, e-mail addresses in non-Latin scripts, "
    "IPv6 or MAC addresses written without a single digit, and anything an image, a file name or "
    "free prose gives away. Scrubbed data can still identify people: review it before training on "
    "anything sensitive."
)

_Span = tuple[int, int]
_Finder = Callable[[str], list[_Span]]

_DIGIT = re.compile(r"\d")

# ---- URL credentials and e-mail

_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/?#@:<>]{1,256}:[^\s/?#@<>]{1,256}(?=@)")
# Latin letters, accented ones included ("zoë.martin@"), but not \w: text in other scripts written
# against an address ("请发邮件到jane@example.com") is not part of it. Bounded repeats keep the
# engine linear on long runs of address-like characters with no address in them.
_LATIN = "A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_EMAIL = re.compile(rf"[{_LATIN}._%+-]{{1,64}}@[{_LATIN}-]{{1,63}}(?:\.[{_LATIN}-]{{1,63}}){{0,8}}\.[A-Za-z]{{2,24}}")

# ---- IBAN

# Characters per country, from the SWIFT IBAN registry.
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")

# ---- cards, SSNs, IP and MAC addresses

# ASCII digits only ([0-9], where \d would take any script's), as the checksums and ipaddress
# expect. Not after or before a word character, a decimal point or a dash and digit: no slice of
# a longer number, a decimal or a dashed ID.
_CARD = re.compile(r"(?<![\w.,+-])[0-9](?:[ -]?[0-9]){12,18}(?!\w|[.,-]\d)")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Not inside a longer dotted run: "1.2.3.4.5" and "999.1.1.1" are no addresses.
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
# A candidate: at least two "hex:" groups (so "::" counts), then hex and dots for the last group
# or an embedded IPv4 address; ipaddress decides.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]{0,15}(?![\w:])")
_MAC = re.compile(r"(?<![\w:-])[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?![\w:-])")

# ---- phone numbers

_PHONE_REGION = "US"
# Every number phonenumbers finds has 7 digits separated by at most a few punctuation marks or
# spaces; text without such a run skips the (slow) matcher.
_PHONE_CANDIDATE = re.compile(r"\d(?:\W{0,4}\d){6}")
_NANP_SHAPE = re.compile(r"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-]?)\d{3}[ .-]\d{4}")


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """The text with every PII hit replaced by its placeholder `<KIND>`, and the hits per kind (only kinds with hits)."""
    counts: dict[str, int] = {}
    # A hit glued to another ("...0958GB82 WEST...") can show only once its neighbour is a
    # placeholder, so passes repeat until one finds nothing. Each pass that finds something
    # replaces original text, and placeholders match no kind, so this ends (almost always after
    # the second pass).
    while found := _scrub_once(text):
        text, hits = found
        for kind, count in hits.items():
            counts[kind] = counts.get(kind, 0) + count
    return text, {kind: counts[kind] for kind in KINDS if kind in counts}


def _scrub_once(text: str) -> tuple[str, dict[str, int]] | None:
    """One pass of every kind in order, or None when it finds nothing."""
    has_at = "@" in text
    has_digit = _DIGIT.search(text) is not None
    if not (has_at or has_digit):
        return None
    counts: dict[str, int] = {}
    for kind, needs_at, find in _DETECTORS:
        if not (has_at if needs_at else has_digit):
            continue
        spans = find(text)
        if spans:
            text = _replace(text, spans, f"<{kind}>")
            counts[kind] = len(spans)
    return (text, counts) if counts else None


def _replace(text: str, spans: list[_Span], placeholder: str) -> str:
    """`text` with each of the (ordered, non-overlapping) spans replaced by `placeholder`."""
    parts = []
    last = 0
    for start, end in spans:
        parts.append(text[last:start])
        parts.append(placeholder)
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _matches(pattern: re.Pattern[str]) -> _Finder:
    """A finder: the spans of all the pattern's matches."""
    return lambda text: [match.span() for match in pattern.finditer(text)]


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _iban_valid(compact: str) -> bool:
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    # int(char, 36) maps 0-9 to themselves and A-Z to 10-35, as ISO 13616 asks.
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _card_valid(digits: str) -> bool:
    # Card numbers start with 2 (Mastercard 22-27, Mir), 3 (Amex, Diners, JCB), 4 (Visa), 5 or 6;
    # this spares the many 13-digit millisecond timestamps and other IDs that start with 1.
    return (digits[0] in "3456" or "22" <= digits[:2] <= "27") and _luhn_valid(digits)


def _grouped(pattern: re.Pattern[str], separators: str, min_length: int, valid: Callable[[str], bool]) -> _Finder:
    """A finder for numbers written in groups. A match can run on into groups around the number
    ("order 123 4111 1111 1111 1111 123"): the whole match is tried, then the match less its last
    groups while at least `min_length` characters are left; when all fail, the search goes on
    from the match's next character, so that a number that starts inside it is found too."""
    drop = str.maketrans("", "", separators)

    def find(text: str) -> list[_Span]:
        spans: list[_Span] = []
        position = 0
        while (match := pattern.search(text, position)) is not None:
            written = match.group()
            ends = [len(written)] + [i for i in range(len(written) - 1, 0, -1) if written[i] in separators]
            position = match.start() + 1
            for end in ends:
                compact = written[:end].translate(drop)
                if len(compact) < min_length:
                    break
                if valid(compact):
                    spans.append((match.start(), match.start() + end))
                    position = match.start() + end
                    break
        return spans

    return find


def _ipv4(match: re.Match[str]) -> _Span | None:
    address = ipaddress.IPv4Address(match.group())
    return None if address.is_loopback or address.is_unspecified else match.span()


def _ipv6(match: re.Match[str]) -> _Span | None:
    candidate = match.group().rstrip(".")  # a full stop ending the sentence
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    # Two written groups at least: "::2" is a Python slice far more often than an address.
    if address.is_loopback or address.is_unspecified or sum(1 for group in candidate.split(":") if group) < 2:
        return None
    return match.start(), match.start() + len(candidate)


def _find_ip_addresses(text: str) -> list[_Span]:
    # IPv6 first: its embedded IPv4 form ("::ffff:192.0.2.1") holds a dotted quad.
    ipv6 = [span for match in _IPV6.finditer(text) if (span := _ipv6(match)) is not None]
    ipv4 = [
        span
        for match in _IPV4.finditer(text)
        if (span := _ipv4(match)) is not None and not any(start <= span[0] < end for start, end in ipv6)
    ]
    return sorted(ipv6 + ipv4)


def _find_phones(text: str) -> list[_Span]:
    if _PHONE_CANDIDATE.search(text) is None:
        return []
    spans = []
    for match in phonenumbers.PhoneNumberMatcher(text, _PHONE_REGION, leniency=phonenumbers.Leniency.POSSIBLE):
        number = match.number
        if phonenumbers.is_valid_number(number) or (
            number.country_code == 1 and _NANP_SHAPE.fullmatch(match.raw_string) is not None
        ):
            spans.append((match.start, match.end))
    return spans


# (kind, runs only on text with an "@" (else: with a digit), finder), in the order of KINDS.
_DETECTORS: tuple[tuple[str, bool, _Finder], ...] = (
    ("URL_CREDENTIALS", True, _matches(_URL_CREDENTIALS)),
    ("EMAIL", True, _matches(_EMAIL)),
    ("IBAN", False, _grouped(_IBAN, " ", 15, _iban_valid)),
    ("CREDIT_CARD", False, _grouped(_CARD, " -", 13, _card_valid)),
    ("US_SSN", False, _matches(_SSN)),
    ("IP_ADDRESS", False, _find_ip_addresses),
    ("MAC_ADDRESS", False, _matches(_MAC)),
    ("PHONE", False, _find_phones),
)
assert tuple(kind for kind, _, _ in _DETECTORS) == KINDS
