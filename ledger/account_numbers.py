"""Account numbers: what a customer types after the paybill to fund a wallet (Pay Bill →
paybill → account number → amount).

Short (6 characters), read out over the phone and typed on a keypad, so the alphabet leaves
out the letters that look like a digit or another letter: no ``O`` (0), ``I`` or ``L`` (1),
``S`` (5), ``B`` (8), ``Z`` (2). A customer who types one of those anyway meant the digit, and
is understood: :func:`normalize` reads ``o``, ``i``, ``l``, ``s``, ``b`` and ``z`` as ``0``,
``1``, ``1``, ``5``, ``8`` and ``2``, ignores case, spaces, dashes and dots, and gives the
canonical form the ledger keeps (``k7-qm 29`` → ``K7QM29``).

The numbers are random (not a sequence a customer could walk), unique by the index on
``account.account_number``; a collision, about one in 300 million per account, is drawn again.
"""
from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ACDEFGHJKMNPQRTUVWXY"
LENGTH = 6
# What a customer may type for a character the alphabet leaves out, and what it means.
_LOOK_ALIKES = str.maketrans("OILSBZ", "011582")
_SEPARATORS = re.compile(r"[\s\-.]+")
_CANONICAL = re.compile(f"[{ALPHABET}]{{{LENGTH}}}")


def generate() -> str:
    """A new random account number: six characters of :data:`ALPHABET`, at least one of them
    a letter (all digits would read like a short phone number or an amount)."""
    while True:
        number = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
        if not number.isdigit():
            return number


def normalize(typed: str | None) -> str | None:
    """The canonical account number a customer meant, or None when what was typed cannot be
    one (wrong length, a character outside the alphabet)."""
    if not isinstance(typed, str):
        return None
    text = _SEPARATORS.sub("", typed).upper().translate(_LOOK_ALIKES)
    return text if _CANONICAL.fullmatch(text) else None
