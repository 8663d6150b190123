"""PII scrubbing: what each kind finds in realistic sentences, what it must leave alone, and
that counts, surrounding text and re-scrubbing behave."""

import pytest

from tunewright.data.pii import KINDS, NOT_DETECTED, scrub

FOUND = [
    # Phones: international, US national formats, the fictional 555 numbers.
    ("Call me on +44 20 7946 0958 tomorrow.", "Call me on <PHONE> tomorrow.", "PHONE"),
    ("Our office: (555) 123-4567, ask for Sam.", "Our office: <PHONE>, ask for Sam.", "PHONE"),
    ("Text 555-123-4567 when you land.", "Text <PHONE> when you land.", "PHONE"),
    ("The SF desk is +1 415 555 2671.", "The SF desk is <PHONE>.", "PHONE"),
    ("tel: 212.555.0123", "tel: <PHONE>", "PHONE"),
    ("Appelez le +33 6 12 34 56 78 ce soir.", "Appelez le <PHONE> ce soir.", "PHONE"),
    ("Toll free: 1-800-555-0199.", "Toll free: <PHONE>.", "PHONE"),
    # E-mail: plus tags, dots, subdomains.
    ("mail me at jane.doe+tickets@example.co.uk please", "mail me at <EMAIL> please", "EMAIL"),
    ("Write to ops@mail.eu-west.example.com.", "Write to <EMAIL>.", "EMAIL"),
    ("(j_smith99@example.org)", "(<EMAIL>)", "EMAIL"),
    # Cards: Visa, Mastercard, Amex test numbers, spaced, dashed and compact.
    ("card 4111 1111 1111 1111 was charged", "card <CREDIT_CARD> was charged", "CREDIT_CARD"),
    ("Use 5500-0000-0000-0004 for the deposit.", "Use <CREDIT_CARD> for the deposit.", "CREDIT_CARD"),
    ("Amex 378282246310005 expires soon", "Amex <CREDIT_CARD> expires soon", "CREDIT_CARD"),
    ("4111 1111 1111 1111 123 (with the CVV)", "<CREDIT_CARD> 123 (with the CVV)", "CREDIT_CARD"),
    # IBANs: grouped and compact.
    ("refund to GB82 WEST 1234 5698 7654 32 today", "refund to <IBAN> today", "IBAN"),
    ("IBAN: DE89370400440532013000.", "IBAN: <IBAN>.", "IBAN"),
    ("Belgian account BE68 5390 0754 7034 2024 onwards", "Belgian account <IBAN> 2024 onwards", "IBAN"),
    # IP addresses.
    ("The server at 192.168.1.100 went down.", "The server at <IP_ADDRESS> went down.", "IP_ADDRESS"),
    ("ssh to 8.8.4.4:22", "ssh to <IP_ADDRESS>:22", "IP_ADDRESS"),
    ("Reach 2001:db8:85a3::8a2e:370:7334.", "Reach <IP_ADDRESS>.", "IP_ADDRESS"),
    ("link-local fe80::1ff:fe23:4567:890a here", "link-local <IP_ADDRESS> here", "IP_ADDRESS"),
    # The rest.
    ("SSN 123-45-6789 is on file", "SSN <US_SSN> is on file", "US_SSN"),
    (
        "DATABASE_URL=postgres://admin:hunter2@db.example.com:5432/app",
        "DATABASE_URL=postgres://<URL_CREDENTIALS>@db.example.com:5432/app",
        "URL_CREDENTIALS",
    ),
    ("device 00:1A:2B:3C:4D:5E joined", "device <MAC_ADDRESS> joined", "MAC_ADDRESS"),
]

LEFT_ALONE = [
    "card 4111 1111 1111 1112 was declined",  # fails the Luhn check
    "1234567812345678",
    "Your order #12345 has shipped.",
    "Upgrade to version 2.10.3 first.",
    "It was 1999.",
    "call me at 5",
    "refund to GB82 WEST 1234 5698 7654 33 today",  # bad IBAN checksum
    "XX82 WEST 1234 5698 7654 32",  # no such IBAN country
    "999.1.1.1",
    "1.2.3.4.5",
    "localhost is 127.0.0.1 and ::1",
    "SSN 666-45-6789 and 123-00-6789 were never issued",
    "Meet on 2024-01-15 at 10:30:00.",
    "ISBN 978-3-16-148410-0",
    "pi is 3.14159265358979323846",
    "created at 1700000000000 ms",
    "total $1,234,567.89 for 331,449,281 people",
    "x[::2] and std::vector<int>",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "w001x w234x w555x w999x w123x w456x w789x",
    "pages 123-456 and 789-1011",
]


@pytest.mark.parametrize(("text", "scrubbed", "kind"), FOUND)
def test_each_kind_is_found_in_a_sentence(text, scrubbed, kind):
    assert scrub(text) == (scrubbed, {kind: 1})


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_what_is_no_pii_is_left_alone(text):
    assert scrub(text) == (text, {})


def test_a_text_without_pii_comes_back_unchanged():
    text = "The quick brown fox jumps over the lazy dog, twice."
    result, counts = scrub(text)
    assert result is text and counts == {}
    assert scrub("") == ("", {})


def test_several_hits_are_counted_per_kind():
    text = (
        "Jane (jane@example.com, j.doe@work.example.org) paid with 4111 1111 1111 1111 and 5500 0000 0000 0004 "
        "from GB82 WEST 1234 5698 7654 32; call +44 20 7946 0958 or (555) 123-4567 or 555-123-4567. "
        "Logged from 10.1.2.3 and 2001:db8::1."
    )
    result, counts = scrub(text)
    assert counts == {"EMAIL": 2, "IBAN": 1, "CREDIT_CARD": 2, "IP_ADDRESS": 2, "PHONE": 3}
    assert list(counts) == [kind for kind in KINDS if kind in counts], "counts follow KINDS' order"
    assert result == (
        "Jane (<EMAIL>, <EMAIL>) paid with <CREDIT_CARD> and <CREDIT_CARD> "
        "from <IBAN>; call <PHONE> or <PHONE> or <PHONE>. "
        "Logged from <IP_ADDRESS> and <IP_ADDRESS>."
    )


def test_a_hit_is_counted_as_one_kind_only():
    # A card's digits are no phone, an IBAN's no card, a URL's credentials no e-mail.
    assert scrub("4111111111111111") == ("<CREDIT_CARD>", {"CREDIT_CARD": 1})
    assert scrub("DE89 3704 0044 0532 0130 00") == ("<IBAN>", {"IBAN": 1})
    assert scrub("https://bob:s3cret@example.com/") == (
        "https://<URL_CREDENTIALS>@example.com/",
        {"URL_CREDENTIALS": 1},
    )
    assert scrub("::ffff:192.0.2.1") == ("<IP_ADDRESS>", {"IP_ADDRESS": 1})


def test_text_around_hits_is_kept_character_for_character():
    text = "Grüße aus Köln — écrivez à zoë.martin@example.fr ou appelez le +33 1 42 68 53 00 🙂 ✓"
    result, counts = scrub(text)
    assert result == "Grüße aus Köln — écrivez à <EMAIL> ou appelez le <PHONE> 🙂 ✓"
    assert result.encode() == "Grüße aus Köln — écrivez à <EMAIL> ou appelez le <PHONE> 🙂 ✓".encode()
    assert counts == {"EMAIL": 1, "PHONE": 1}
    # No spaces between the address and the text around it.
    assert scrub("请发邮件到jane@example.com谢谢") == ("请发邮件到<EMAIL>谢谢", {"EMAIL": 1})


def test_scrubbing_twice_finds_nothing_more():
    texts = [scrubbed for _, scrubbed, _ in FOUND]
    texts.append(
        scrub("a@b.co 4111 1111 1111 1111 GB82 WEST 1234 5698 7654 32 10.0.0.7 +1 415 555 2671 123-45-6789")[0]
    )
    for text in texts:
        assert scrub(text) == (text, {}), text


def test_placeholders_and_the_documented_limits():
    assert len(set(KINDS)) == len(KINDS)
    assert {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS"} <= set(KINDS)
    for _, scrubbed, kind in FOUND:
        assert kind in KINDS and f"<{kind}>" in scrubbed
    assert "names" in NOT_DETECTED and "postal addresses" in NOT_DETECTED and "\n" not in NOT_DETECTED


def test_numbers_next_to_other_numbers_and_hits_glued_together():
    # The card's candidate starts at "123"; the card inside it is still found.
    assert scrub("order 123 4111 1111 1111 1111 123") == ("order 123 <CREDIT_CARD> 123", {"CREDIT_CARD": 1})
    assert scrub("123-45-6789 4111 1111 1111 1111") == ("<US_SSN> <CREDIT_CARD>", {"CREDIT_CARD": 1, "US_SSN": 1})
    assert scrub("+44 20 7946 0958GB82 WEST 1234 5698 7654 32") == ("<PHONE><IBAN>", {"IBAN": 1, "PHONE": 1})


def test_digits_of_other_scripts_are_no_trouble():
    # \d takes them; the checksums and ipaddress would not.
    assert scrub("ip ١.٢.٣.٤ and ４１１１ １１１１ １１１１ １１１１") == (
        "ip ١.٢.٣.٤ and ４１１１ １１１１ １１１１ １１１１",
        {},
    )
    assert scrub("ring +٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨") == ("ring <PHONE>", {"PHONE": 1})
