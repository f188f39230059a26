"""Public identifiers: a type prefix and random base-32 text (``tu_…``, ``le_…``)."""
import secrets

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base 32: no i, l, o, u


def new_id(prefix: str, length: int = 20) -> str:
    # One read of the system's random source per id: secrets.choice read it once per
    # character, 20 system calls per id and several ids per credit (make bench, "Crediting").
    # 256 is a multiple of 32, so the low five bits of a random byte are uniform.
    return prefix + "_" + "".join([_ALPHABET[b & 31] for b in secrets.token_bytes(length)])


def short_reference(public_id: str) -> str:
    """Up to 12 letters and digits for Daraja's AccountReference, shown on the phone."""
    return public_id.split("_", 1)[-1][:12].upper()
