"""Kenyan mobile numbers: parsed by Google's libphonenumber rules, kept as ``2547…``/``2541…``."""
from __future__ import annotations

import re

import phonenumbers


class InvalidPhone(ValueError):
    pass


_SEPARATORS = re.compile(r"[\s\-().]")


def normalize_kenyan_mobile(raw: str) -> str:
    """``0712 345 678``, ``712345678``, ``+254-712-345678`` … → ``254712345678``."""
    if not isinstance(raw, str):
        raise InvalidPhone("must be a string")
    text = _SEPARATORS.sub("", raw.strip())
    if not text or len(text) > 16:
        raise InvalidPhone("is not a Kenyan mobile number")
    if re.fullmatch(r"[71]\d{8}", text):      # the national number without its leading 0
        text = "0" + text
    elif re.fullmatch(r"254\d{9}", text):
        text = "+" + text
    try:
        number = phonenumbers.parse(text, "KE")
    except phonenumbers.NumberParseException:
        raise InvalidPhone("is not a Kenyan mobile number") from None
    if number.country_code != 254 or not phonenumbers.is_valid_number(number):
        raise InvalidPhone("is not a Kenyan mobile number")
    if phonenumbers.number_type(number) not in (phonenumbers.PhoneNumberType.MOBILE,
                                                phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        raise InvalidPhone("is not a Kenyan mobile number")
    msisdn = f"254{number.national_number}"
    if not re.fullmatch(r"254[71]\d{8}", msisdn):
        raise InvalidPhone("is not a Kenyan mobile number")
    return msisdn


def mask(msisdn: str | None) -> str | None:
    """``254712345678`` → ``2547****5678``: enough to tell numbers apart in a log."""
    if not msisdn:
        return msisdn
    text = str(msisdn)
    if len(text) < 8:
        return "****"
    return text[:4] + "****" + text[-4:]
