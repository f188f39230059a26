"""What the client needs to know, passed in by the caller (the package never reads the
environment)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["DarajaConfig", "TRANSACTION_TYPES"]

TRANSACTION_TYPES = ("CustomerPayBillOnline", "CustomerBuyGoodsOnline")


@dataclass(frozen=True)
class DarajaConfig:
    base_url: str
    consumer_key: str
    consumer_secret: str = field(repr=False)
    shortcode: str
    passkey: str = field(repr=False)
    transaction_type: str = "CustomerPayBillOnline"
    #: None → the shortcode (paybill); the till number for CustomerBuyGoodsOnline
    party_b: str | None = None
    callback_url: str = ""
    connect_timeout: float = 3.05
    read_timeout: float = 15.0
    #: a cached token is refreshed this many seconds before it expires
    token_margin_s: float = 120

    def __post_init__(self):
        base_url = (self.base_url or "").strip().rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("DarajaConfig.base_url must be an http(s) URL")
        object.__setattr__(self, "base_url", base_url)
        shortcode = str(self.shortcode).strip()
        if not shortcode.isdigit():
            raise ValueError("DarajaConfig.shortcode must be digits")
        object.__setattr__(self, "shortcode", shortcode)
        if self.party_b is not None:
            party_b = str(self.party_b).strip()
            if not party_b.isdigit():
                raise ValueError("DarajaConfig.party_b must be digits or None")
            object.__setattr__(self, "party_b", party_b)
        if self.transaction_type not in TRANSACTION_TYPES:
            raise ValueError(f"DarajaConfig.transaction_type must be one of {TRANSACTION_TYPES}")
        for name in ("consumer_key", "consumer_secret", "passkey"):
            if not getattr(self, name):
                raise ValueError(f"DarajaConfig.{name} is required")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) or getattr(self, name) <= 0:
                raise ValueError(f"DarajaConfig.{name} must be a positive number of seconds")
        if self.token_margin_s < 0:
            raise ValueError("DarajaConfig.token_margin_s must not be negative")

    @property
    def business_party_b(self) -> str:
        return self.party_b or self.shortcode

    @property
    def token_scope(self) -> str:
        """A short hash of base_url + consumer_key: appended to the token cache's key, so
        sandbox and production credentials (or two apps) never share a token."""
        digest = hashlib.sha256(f"{self.base_url}\n{self.consumer_key}".encode("utf-8"))
        return digest.hexdigest()[:12]
