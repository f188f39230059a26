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
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        known = set(self._secrets)
        known.update(s for s in secrets if isinstance(s, str) and len(s) >= 8)
        # longest first, so that a secret containing another is removed whole
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def text(self, text: str) -> str:
        if not text:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _CREDENTIALS:
            if pattern.groups:
                text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
            else:
                text = pattern.sub(REDACTED, text)
        return mask_phones(text)

    def value(self, value, key: str | None = None):
        """A structure with every string redacted, secret-named keys emptied, and numbers
        that are phone numbers (Daraja sends PhoneNumber as a number) masked."""
        if key is not None and SECRET_KEY.search(key) and value not in (None, "", 0, False):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            masked = mask_phones(str(value))
            return value if masked == str(value) else masked
        if isinstance(value, dict):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [self.value(v) for v in value]
        return value
