"""Where a webhook may be sent, and sending it there and nowhere else.

A webhook URL is the client's to choose, and the gateway POSTs to it from inside our
network: unchecked, it would let anyone make us call loopback, private or link-local
services (a cloud metadata endpoint at 169.254.169.254, an admin port on 127.0.0.1). So a
URL must be http(s) and every address its host resolves to must be public, unless
``WEBHOOK_ALLOW_PRIVATE=1`` (development). The check runs when an endpoint is created and
again at every delivery, and the delivery connects to the very address that was checked
(TLS still verifies the certificate against the host name): a name that re-resolves to
127.0.0.1 between the check and the connection (DNS rebinding) gains nothing.
Redirects are not followed, for the same reason.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from typing import Callable
from urllib.parse import SplitResult, urlsplit

import certifi
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

MAX_URL_LENGTH = 2048
DNS_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 3.05
READ_TIMEOUT_S = 10.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[Address]]

_dns_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


class UnsafeUrl(ValueError):
    """Not a URL we will send webhooks to; the message says why, for the client."""


class DeliveryFailed(Exception):
    """The POST did not get an HTTP answer (refused, timed out, TLS, protocol)."""


def parse(url) -> SplitResult:
    """The URL's parts if its form is acceptable (no network involved)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7f for c in url):
        raise UnsafeUrl("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("must start with https:// or http://")
    if not parts.hostname:
        raise UnsafeUrl("must name a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("must not carry credentials; authenticate deliveries by their signature")
    if port == 0:
        raise UnsafeUrl("must not use port 0")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to, within DNS_TIMEOUT_S."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    future = _dns_pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=DNS_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise UnsafeUrl(f"host {host!r} did not resolve in time") from None
    except (OSError, UnicodeError, ValueError):
        raise UnsafeUrl(f"host {host!r} does not resolve") from None
    addresses = []
    for info in infos:
        try:
            address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrl(f"host {host!r} does not resolve")
    return addresses


def is_public(address: Address) -> bool:
    """A global unicast address, also looking inside IPv6 forms that carry an IPv4 one."""
    embedded = []
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            embedded.append(address.ipv4_mapped)
        if address.sixtofour:
            embedded.append(address.sixtofour)
        if address.teredo:
            embedded.extend(address.teredo)
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(a.is_global and not a.is_multicast for a in (address, *embedded))


def check(url, *, allow_private: bool, resolver: Resolver = resolve
          ) -> tuple[SplitResult, list[Address]]:
    """The URL's parts and the addresses to connect to, or UnsafeUrl."""
    parts = parse(url)
    addresses = resolver(parts.hostname, default_port(parts))
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise UnsafeUrl(f"host {parts.hostname!r} resolves to a loopback, private or "
                            "otherwise non-public address")
    return parts, addresses


def post(url: str, body: bytes, headers: dict, *, allow_private: bool,
         resolver: Resolver = resolve) -> int:
    """POST ``body`` to ``url`` at an address that passed the check; the HTTP status code.

    Raises UnsafeUrl when the URL is not allowed (now), DeliveryFailed when no HTTP answer
    came. Never follows a redirect; never reads more of the answer than its status line.
    """
    parts, addresses = check(url, allow_private=allow_private, resolver=resolver)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    headers = {**headers, "Host": parts.netloc}
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    last_error: Exception | None = None
    for address in addresses[:3]:
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                str(address), default_port(parts), timeout=timeout, retries=False, maxsize=1,
                server_hostname=parts.hostname, assert_hostname=parts.hostname,
                cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
        else:
            pool = urllib3.HTTPConnectionPool(str(address), default_port(parts),
                                              timeout=timeout, retries=False, maxsize=1)
        try:
            response = pool.urlopen("POST", target, body=body, headers=headers,
                                    redirect=False, retries=False, preload_content=False,
                                    assert_same_host=False)
            status = response.status
            response.close()
            return status
        except (urllib3.exceptions.NewConnectionError,
                urllib3.exceptions.ConnectTimeoutError) as exc:
            last_error = exc  # this address is unreachable: try the next one
        except (Urllib3Error, OSError) as exc:
            raise DeliveryFailed(_describe(exc)) from None
        finally:
            pool.close()
    raise DeliveryFailed(_describe(last_error))


def _describe(exc: Exception | None) -> str:
    if exc is None:
        return "no address to connect to"
    kind = {urllib3.exceptions.NewConnectionError: "connection refused or unreachable",
            urllib3.exceptions.ConnectTimeoutError: "connect timed out",
            urllib3.exceptions.ReadTimeoutError: "no answer in time",
            urllib3.exceptions.SSLError: "TLS failed",
            urllib3.exceptions.ProtocolError: "connection broken"}
    for cls, text in kind.items():
        if isinstance(exc, cls):
            return text
    return type(exc).__name__
