"""Masking phone numbers and removing secrets from text meant for people: log lines, dead
letters shown by ``topupctl``.

- A Kenyan mobile number in any usual form (``254712345678``, ``+254 712 345 678``,
  ``0712-345-678``) becomes ``2547****5678``: the same number always masks the same way, so
  lines about one customer can still be matched up.
- A known secret value (Daraja's consumer secret and passkey, the callback token, the ops
  token) becomes ``[redacted]`` wherever it appears, e.g. inside a callback URL.
- Anything shaped like a credential does too: API keys (``sk_…``), webhook secrets
  (``whsec_…``), ``Bearer``/``Basic`` authorization values.
"""
from __future__ import annotations

import re
from typing import Iterable

REDACTED = "[redacted]"

# Twelve digits 2547…/2541…, ten digits 07…/01…, optionally with a + and spaces or dashes
# between the usual groups; never part of a longer run of digits.
PHONE = re.compile(
    r"(?<![\d])(?:\+?254[ -]?|0)([17]\d{2})[ -]?(\d{2})(\d)[ -]?(\d)(\d{2})(?![\d])")

_CREDENTIALS = (
    re.compile(r"\bsk_[A-Za-z0-9]{16,}"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]{16,}"),
    re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[redacted\])[A-Za-z0-9._~+/=-]{8,}"),
)

# Keys whose values are secrets whatever they hold (log extras, JSON fields).
SECRET_KEY = re.compile(r"(?i)(secret|passkey|password|token|api_?key|authorization)")


# The credentials and the phone in one pattern, for one scan of a text instead of four.
_ANY = re.compile(
    r"(?P<sk>\bsk_[A-Za-z0-9]{16,})"
    r"|(?P<whsec>\bwhsec_[A-Za-z0-9+/=]{16,})"
    r"|(?i:\b(?P<scheme>bearer|basic)(?P<space>\s+)(?!\[redacted\])[A-Za-z0-9._~+/=-]{8,})"
    r"|(?<![\d])(?:\+?254[ -]?|0)(?P<p1>[17]\d{2})[ -]?(?P<p2>\d{2})(?P<p3>\d)[ -]?(?P<p4>\d)"
    r"(?P<p5>\d{2})(?![\d])")
_SHORTEST = 8
# What any match of _ANY holds, found far quicker than _ANY finds it (its credential branches
# cost ~12 us on a 200-character line: a case-insensitive word boundary tried at every
# position). A text none of these find has nothing _ANY would change:
# - the sk_ and whsec_ branches hold those exact characters;
# - the bearer/basic branch, read case-insensitively as _ANY reads it ("b" has no other case
#   than "B"): this pattern;
# - the phone branch: this pattern, the same one started at its first character.
_CREDENTIAL_WORD = re.compile(r"[bB](?i:earer|asic)")
_PHONE_AT_ITS_START = re.compile(
    r"[+02](?<=(?<![\d])[+02])(?:(?<=\+)254[ -]?|(?<=2)54[ -]?|(?<=0))"
    r"[17]\d{2}[ -]?\d{3}[ -]?\d{3}(?![\d])")
_PHONE_MIN = 10 ** 11  # a phone as a number has 12 digits (254XXXXXXXXX): none is smaller


def _replace(match: re.Match) -> str:
    if match.group("p1") is not None:
        digits = "".join(match.group("p1", "p2", "p3", "p4", "p5"))
        return f"254{digits[0]}****{digits[-4:]}"
    if match.group("scheme") is not None:
        return f"{match.group('scheme')}{match.group('space')}{REDACTED}"
    return REDACTED


def mask_phone_match(match: re.Match) -> str:
    digits = "".join(match.groups())       # the nine digits after 254 / 0
    return f"254{digits[0]}****{digits[-4:]}"


def mask_phones(text: str) -> str:
    return PHONE.sub(mask_phone_match, text)


class Redactor:
    """Masks phones and removes secrets. ``Redactor(secrets=[...])``; values shorter than
    8 characters are ignored (they would redact ordinary words)."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._secrets: tuple[str, ...] = ()
        self._keys: dict = {}
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        known = set(self._secrets)
        known.update(s for s in secrets if isinstance(s, str) and len(s) >= 8)
        # longest first, so that a secret containing another is removed whole
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def text(self, text: str) -> str:
        # Nothing shorter can hold a secret (8 characters at least), a phone (10) or a
        # credential; and one scan of the text finds credentials and phones alike.
        if not text or len(text) < _SHORTEST:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _ANY.sub(_replace, text)

    def key(self, key) -> tuple[object, bool]:
        """A mapping's key as it may be written, and whether its value is a secret."""
        found = self._keys.get(key)
        if found is None:
            name = str(key)
            found = (self.text(key) if isinstance(key, str) else key,
                     SECRET_KEY.search(name) is not None)
            if len(self._keys) >= 4096:   # keys are mostly field names: a few dozen
                self._keys.clear()
            self._keys[key] = found
        return found

    def fields(self, fields: dict) -> dict:
        """A log line's fields redacted exactly as :meth:`value` redacts them, in one scan
        when, as in nearly every line, nothing needs hiding.

        The strings are joined with NULs and scanned once for a secret, a credential or a
        phone; only a line where that finds something has its strings redacted one by one.
        No pattern here can match across a NUL (none of them admits one, and a NUL stands
        where each string begins and ends as the string's own start and end do), so a
        string with something to hide always makes the joined text show it.
        """
        redacted, texts, known = {}, {}, self._keys
        for key, value in fields.items():
            written, secret = known.get(key) or self.key(key)
            kind = type(value)
            if secret and value not in (None, "", 0, False):
                redacted[written] = REDACTED
            elif kind is str:
                redacted[written] = texts[written] = value
            elif value is None or kind is bool or (kind is int
                                                   and -_PHONE_MIN < value < _PHONE_MIN):
                redacted[written] = value
            else:
                redacted[written] = self._value(value)
        if texts and self._something_in("\0".join(texts.values())):
            for written, value in texts.items():
                if redacted.get(written) is value:   # not since overwritten by another key
                    redacted[written] = self.text(value)
        return redacted

    def _something_in(self, text: str) -> bool:
        """Whether :meth:`text` could change anything in ``text`` (a secret, a credential or
        a phone in it); never false when it would."""
        return (any(secret in text for secret in self._secrets)
                or "sk_" in text or "whsec_" in text
                or _CREDENTIAL_WORD.search(text) is not None
                or _PHONE_AT_ITS_START.search(text) is not None)

    def value(self, value, key: str | None = None):
        """A structure with every string redacted (keys too), secret-named keys emptied, and
        numbers that are phone numbers (Daraja sends PhoneNumber as a number) masked."""
        if key is not None and SECRET_KEY.search(key) and value not in (None, "", 0, False):
            return REDACTED
        return self._value(value)

    def _value(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            if -_PHONE_MIN < value < _PHONE_MIN:  # too few digits to be a phone number
                return value
            masked = mask_phones(str(value))
            return value if masked == str(value) else masked
        if isinstance(value, float):
            return self._value(int(value)) if value.is_integer() and \
                not -_PHONE_MIN < value < _PHONE_MIN else value
        if isinstance(value, dict):
            redacted = {}
            for k, v in value.items():
                written, secret = self.key(k)
                redacted[written] = (REDACTED if secret and v not in (None, "", 0, False)
                                     else self._value(v))
            return redacted
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._value(v) for v in value]
        return value
