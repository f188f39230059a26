"""The URLs the gateway gives Daraja to call (the STK CallBackURL, the C2B confirmation and
validation URLs, the Pull Transactions CallBackURL): Daraja refuses any that contains one of
these words, in any case, so the gateway refuses them first and says which."""
from __future__ import annotations

__all__ = ["WORDS_DARAJA_REFUSES", "refused_word"]

WORDS_DARAJA_REFUSES = ("mpesa", "m-pesa", "safaricom", "exe", "exec", "cmd", "sql", "query")


def refused_word(url: str) -> str | None:
    """The first word of :data:`WORDS_DARAJA_REFUSES` that ``url`` contains, or None."""
    lowered = (url or "").lower()
    return next((word for word in WORDS_DARAJA_REFUSES if word in lowered), None)
