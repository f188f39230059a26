"""The STK Password and Timestamp, and keeping secrets and phone numbers out of logs."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

__all__ = ["NAIROBI", "nairobi_timestamp", "stk_password", "mask_phone", "Scrubber"]

#: Africa/Nairobi is UTC+3 all year (no DST), so a fixed offset needs no tz database.
NAIROBI = timezone(timedelta(hours=3), "EAT")


def nairobi_timestamp(when: float | datetime | None = None) -> str:
    """``YYYYMMDDHHmmss`` in Nairobi time, as Daraja's Timestamp field wants it.

    ``when`` is a Unix time (what ``time.time()`` returns) or an aware datetime; a naive
    datetime is taken as UTC (time is UTC inside this project). ``None`` means now.
    """
    if when is None:
        moment = datetime.now(timezone.utc)
    elif isinstance(when, datetime):
        moment = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    else:
        moment = datetime.fromtimestamp(float(when), timezone.utc)
    return moment.astimezone(NAIROBI).strftime("%Y%m%d%H%M%S")


def stk_password(shortcode: str | int, passkey: str, timestamp: str) -> str:
    """``base64(BusinessShortCode + Passkey + Timestamp)``; pass the very Timestamp you send."""
    return base64.b64encode(f"{shortcode}{passkey}{timestamp}".encode("utf-8")).decode("ascii")


def mask_phone(msisdn: str | int | None) -> str | None:
    """``254712345678`` → ``2547****5678``: enough to tell numbers apart in a log."""
    if msisdn is None or msisdn == "":
        return msisdn  # type: ignore[return-value]
    text = str(msisdn)
    if len(text) < 8:
        return "****"
    return text[:4] + "****" + text[-4:]


class Scrubber:
    """Replaces known secret strings with ``***`` in text destined for errors and logs."""

    MIN_LENGTH = 6  # shorter strings would blank out ordinary words

    def __init__(self, *secrets: str | None):
        self._secrets = {s for s in secrets if s and len(s) >= self.MIN_LENGTH}

    def with_secrets(self, *more: str | None) -> "Scrubber":
        scrubber = Scrubber()
        scrubber._secrets = self._secrets | {s for s in more if s and len(s) >= self.MIN_LENGTH}
        return scrubber

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        # longest first, so a secret containing another is replaced whole
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        return text
