"""Public identifiers: a type prefix and random base-32 text (``tu_…``, ``le_…``)."""
import secrets

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base 32: no i, l, o, u


def new_id(prefix: str, length: int = 20) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def short_reference(public_id: str) -> str:
    """Up to 12 letters and digits for Daraja's AccountReference, shown on the phone."""
    return public_id.split("_", 1)[-1][:12].upper()
