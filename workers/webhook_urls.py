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

A connection is kept for the next delivery to the same checked address and host name (a new
TCP, and in production TLS, connection per delivery was most of a delivery's CPU): a later
delivery still resolves and checks the host first, and takes a kept connection only if it
goes to an address that passed that check.
"""
from __future__ import annotations

import collections
import concurrent.futures
import ipaddress
import re
import socket
import threading
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
# ::a.b.c.d, deprecated: the standard library does not see the IPv4 address in it (for
# ::127.0.0.1 neither is_loopback nor ipv4_mapped), yet a host with an automatic tunnel
# (Linux's sit) sends it to that IPv4 address.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[Address]]

# one scan in C: a generator over every character was 2% of a delivery's CPU (make bench)
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")

_dns_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


class UnsafeUrl(ValueError):
    """Not a URL we will send webhooks to; the message says why, for the client."""


class DeliveryFailed(Exception):
    """The POST did not get an HTTP answer (refused, timed out, TLS, protocol)."""


def parse(url) -> SplitResult:
    """The URL's parts if its form is acceptable (no network involved)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    if _SPACE_OR_CONTROL.search(url):
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


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 form carries: mapped, compatible, NAT64, 6to4, Teredo."""
    embedded = []
    if address.ipv4_mapped:
        embedded.append(address.ipv4_mapped)
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour:
        embedded.append(address.sixtofour)
    if address.teredo:
        embedded.extend(address.teredo)
    return embedded


def is_public(address: Address) -> bool:
    """A global unicast address, also looking inside IPv6 forms that carry an IPv4 one."""
    if address.is_unspecified:  # :: and 0.0.0.0 reach this host
        return False
    embedded = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
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
    came. Never follows a redirect; reads at most KEEP_ANSWER_UP_TO bytes of the answer
    after its status line (a longer one, or one of unknown length, is dropped with its
    connection).
    """
    parts, addresses = check(url, allow_private=allow_private, resolver=resolver)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    headers = {**headers, "Host": parts.netloc}
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    last_error: Exception | None = None
    for address in addresses[:3]:
        pool, kept = _pool(parts, address)
        try:
            try:
                response = _send(pool, target, body, headers, timeout)
            except urllib3.exceptions.ProtocolError:
                if not kept:
                    raise
                # A kept connection the receiver closed as we used it: once more, on a
                # connection of its own (a receiver may see this event twice, which Standard
                # Webhooks allows: the webhook-id is the same).
                pool = _new_pool(parts, address, maxsize=1)
                try:
                    response = _send(pool, target, body, headers, timeout)
                    status = response.status
                    response.close()
                    return status
                finally:
                    pool.close()
            status = response.status
            _finish(response)
            return status
        except (urllib3.exceptions.NewConnectionError,
                urllib3.exceptions.ConnectTimeoutError) as exc:
            last_error = exc  # this address is unreachable: try the next one
        except (Urllib3Error, OSError) as exc:
            raise DeliveryFailed(_describe(exc)) from None
    raise DeliveryFailed(_describe(last_error))


KEEP_ANSWER_UP_TO = 64 * 1024
POOLS_KEPT = 64
_pools: collections.OrderedDict = collections.OrderedDict()
_pools_lock = threading.Lock()


def _new_pool(parts: SplitResult, address: Address, *, maxsize: int
              ) -> urllib3.HTTPConnectionPool:
    if parts.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            str(address), default_port(parts), retries=False, maxsize=maxsize,
            server_hostname=parts.hostname, assert_hostname=parts.hostname,
            cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
    return urllib3.HTTPConnectionPool(str(address), default_port(parts), retries=False,
                                      maxsize=maxsize)


def _pool(parts: SplitResult, address: Address) -> tuple[urllib3.HTTPConnectionPool, bool]:
    """The kept pool for this checked address and host name; and whether it served before."""
    key = (parts.scheme, str(address), default_port(parts), parts.hostname)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None:
            _pools.move_to_end(key)
            return pool, pool.num_requests > 0
        pool = _pools[key] = _new_pool(parts, address, maxsize=4)
        while len(_pools) > POOLS_KEPT:
            _pools.popitem(last=False)[1].close()
    return pool, False


def _send(pool, target: str, body: bytes, headers: dict, timeout):
    return pool.urlopen("POST", target, body=body, headers=headers, timeout=timeout,
                        redirect=False, retries=False, preload_content=False,
                        release_conn=False, assert_same_host=False)


def _finish(response) -> None:
    """Give the connection back for the next delivery if its answer is short and read whole;
    else drop it. The status is known already: nothing here fails the attempt."""
    length = response.length_remaining
    try:
        if length is not None and length <= KEEP_ANSWER_UP_TO:
            if length:
                response.read(length, decode_content=False)
            if response.length_remaining == 0:
                response.release_conn()
                return
    except (Urllib3Error, OSError):
        pass
    response.close()
    response.release_conn()  # its place in the pool, for a new connection


def close_kept_connections() -> None:
    with _pools_lock:
        while _pools:
            _pools.popitem()[1].close()


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
