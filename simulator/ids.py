"""Identifiers shaped like Daraja's: access tokens, request ids, receipts.

They come from their own generator, seeded by the OS, never from the simulator's seed: a
seeded run must not hand out the same CheckoutRequestID or receipt as the previous run to a
gateway whose database remembers them.
"""
from __future__ import annotations

import random
import string
from datetime import datetime

_random = random.Random()  # seeded from os.urandom

_TOKEN_CHARS = string.ascii_letters + string.digits
_RECEIPT_HEAD = string.ascii_uppercase
_RECEIPT_CHARS = string.ascii_uppercase + string.digits


def access_token() -> str:
    """28 letters and digits, like ``c9SQxWWhmdVRlyh0zh8gZDTkubVF``."""
    return "".join(_random.choices(_TOKEN_CHARS, k=28))


def receipt() -> str:
    """10 upper-case letters and digits starting with a letter, like ``PE73OJNTHB``."""
    return _random.choice(_RECEIPT_HEAD) + "".join(_random.choices(_RECEIPT_CHARS, k=9))


def merchant_request_id(seq: int) -> str:
    """Like ``2654-4b64-97ff-b827b542881d3130``: random hex, then a sequence number.

    The last group's hex has a letter every four characters: twelve random hex digits alone
    are, every few thousand ids, ten decimal digits that read as a Kenyan phone number, which
    the log audit rightly cannot tell from one."""
    bits = _random.getrandbits(48)
    last = "".join(_random.choice("abcdef") + f"{_random.getrandbits(12):03x}" for _ in range(3))
    return (f"{bits >> 32:04x}-{(bits >> 16) & 0xFFFF:04x}-{bits & 0xFFFF:04x}-"
            f"{last}{seq}")


def checkout_request_id(now_eat: datetime, seq: int) -> str:
    """``ws_CO_`` + DDMMYYYYHHmmss + milliseconds + a 5-digit sequence: 22 digits, unique
    unless 100 000 pushes arrive within one millisecond."""
    return (f"ws_CO_{now_eat.strftime('%d%m%Y%H%M%S')}{now_eat.microsecond // 1000:03d}"
            f"{seq % 100_000:05d}")


def request_id(seq: int) -> str:
    """Like ``11559-988723-1``."""
    return f"{_random.randint(10000, 99999)}-{seq}-1"


def conversation_id() -> str:
    """Like ``AG_20191219_00004e48cf7e3533f581``: an OriginatorCoversationID or ResponseRefID."""
    return f"AG_{_random.randint(10**7, 10**8 - 1)}_{_random.getrandbits(80):020x}"
