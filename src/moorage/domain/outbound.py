"""Outbound URLs, the pure part: one strict parser for hosts and one table of address kinds.

The registry calls upstream registries, replication remotes and scanner adapters on an
administrator's behalf. A host is accepted only in one spelling: a canonical dotted quad, an
IPv6 address in brackets, or a DNS name. Everything a resolver or `inet_aton` would read as an
address in some other way (`2130706433`, `0x7f.1`, `012.0.0.1`, `10.1`, a trailing dot,
percent-encoding, unicode digits, a zone id, userinfo) is refused, so no check can be bypassed by
spelling an address differently from how the socket layer reads it.

Addresses fall into kinds: public, those `allowPrivateNetwork` opens (private networks,
loopback for the configured endpoint itself), and those never contacted (unspecified,
link-local, cloud metadata, multicast, broadcast). IPv6 addresses that embed an IPv4 address
(mapped, compatible, 6to4, NAT64, Teredo) are judged by the address they embed, and one that
embeds a non-public IPv4 address is never contacted: the IPv4 address itself is the one way to
name such an endpoint.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH: Final = 2048
SETTING: Final = "allowPrivateNetwork (CLI --allow-private-network)"
GUARD: Final = "refused by the outbound guard"

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# A last label that a resolver reads as a number makes the whole host an IPv4 address (WHATWG).
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_OCTET: Final = re.compile(r"0|[1-9][0-9]{0,2}")
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class OutboundURLError(ValueError):
    """The URL may not be contacted; the message says why."""


class Kind(Enum):
    """A non-public address kind: (description, never contacted even with the setting)."""

    UNSPECIFIED = ("the unspecified address", True)
    LINK_LOCAL = ("a link-local address (cloud metadata services answer there)", True)
    METADATA = ("a cloud metadata address", True)
    MULTICAST = ("a multicast address", True)
    BROADCAST = ("the broadcast address", True)
    LOOPBACK = ("a loopback address", False)
    PRIVATE = ("a private-network address", False)
    SHARED = ("a shared (carrier-grade NAT) address", False)
    SPECIAL = ("a special-purpose address that is not globally reachable", False)

    @property
    def description(self) -> str:
        return self.value[0]

    @property
    def never(self) -> bool:
        return bool(self.value[1])


_V4_KINDS: Final = (
    (ipaddress.ip_network("0.0.0.0/8"), Kind.UNSPECIFIED),
    (ipaddress.ip_network("127.0.0.0/8"), Kind.LOOPBACK),
    (ipaddress.ip_network("169.254.0.0/16"), Kind.LINK_LOCAL),
    (ipaddress.ip_network("100.100.100.200/32"), Kind.METADATA),  # Alibaba Cloud
    (ipaddress.ip_network("168.63.129.16/32"), Kind.METADATA),  # Azure wire server
    (ipaddress.ip_network("192.0.0.192/32"), Kind.METADATA),  # Oracle Cloud
    (ipaddress.ip_network("10.0.0.0/8"), Kind.PRIVATE),
    (ipaddress.ip_network("172.16.0.0/12"), Kind.PRIVATE),
    (ipaddress.ip_network("192.168.0.0/16"), Kind.PRIVATE),
    (ipaddress.ip_network("100.64.0.0/10"), Kind.SHARED),
    (ipaddress.ip_network("224.0.0.0/4"), Kind.MULTICAST),
    (ipaddress.ip_network("255.255.255.255/32"), Kind.BROADCAST),
)
_V6_KINDS: Final = (
    (ipaddress.ip_network("::/128"), Kind.UNSPECIFIED),
    (ipaddress.ip_network("::1/128"), Kind.LOOPBACK),
    (ipaddress.ip_network("fe80::/10"), Kind.LINK_LOCAL),
    (ipaddress.ip_network("fd00:ec2::/32"), Kind.METADATA),  # AWS (fd00:ec2::254)
    (ipaddress.ip_network("fc00::/7"), Kind.PRIVATE),
    (ipaddress.ip_network("fec0::/10"), Kind.PRIVATE),  # deprecated site-local
    (ipaddress.ip_network("ff00::/8"), Kind.MULTICAST),
)
_MAPPED: Final = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")


@dataclass(frozen=True, slots=True)
class Classified:
    kind: Kind
    embedded: ipaddress.IPv4Address | None = None  # the IPv4 address an IPv6 one carries

    def describe(self) -> str:
        if self.embedded is None:
            return self.kind.description
        return f"{self.kind.description} ({self.embedded} embedded in an IPv6 address)"


def _classify_v4(ip: ipaddress.IPv4Address) -> Kind | None:
    for network, kind in _V4_KINDS:
        if ip in network:
            return kind
    return None if ip.is_global else Kind.SPECIAL


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, bool]:
    """(the IPv4 address inside `ip`, whether a public one still makes `ip` special)."""
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64:
        return low, False
    if ip in _NAT64_LOCAL:
        return low, True
    if ip in _COMPATIBLE and int(ip) > 1:
        return low, True  # deprecated IPv4-compatible form: never a public destination
    if ip.sixtofour is not None:
        return ip.sixtofour, False
    if ip.teredo is not None:
        server, client = ip.teredo
        return (server if _classify_v4(server) is not None else client), False
    return None, False


def classify(ip: IPAddress) -> Classified | None:
    """The kind of a non-public address, or None for a public one."""
    if isinstance(ip, ipaddress.IPv4Address):
        kind = _classify_v4(ip)
        return None if kind is None else Classified(kind)
    if ip.scope_id:
        return Classified(Kind.LINK_LOCAL)
    plain = ipaddress.IPv6Address(int(ip))
    embedded, special = _embedded_v4(plain)
    if embedded is not None:
        inner = _classify_v4(embedded)
        if inner is not None:
            return Classified(inner, embedded)
        if special:
            return Classified(Kind.SPECIAL, embedded)
        return None
    for network, kind in _V6_KINDS:
        if plain in network:
            return Classified(kind)
    return None if plain.is_global else Classified(Kind.SPECIAL)


def refusal(ip: IPAddress, *, allow_private: bool, foreign: bool) -> str | None:
    """Why `ip` may not be contacted (a description and the hint that goes with it), or None.

    `foreign`: the host is not the configured endpoint's own (a redirect target, a token
    service the remote names). Such a host may be on a private network when the endpoint
    allows private networks, but never on loopback: a remote must not be able to point the
    registry at its own host's services.
    """
    found = classify(ip)
    if found is None:
        return None
    description = found.describe()
    if found.kind.never:
        return f"{description}; it is never contacted, even with {SETTING}"
    if found.embedded is not None:
        # 6to4, Teredo, NAT64 and compatible forms are not the address they embed: an
        # endpoint on a private network is named by its IPv4 address itself.
        return (
            f"{description}; such an IPv6 form is never contacted, even with {SETTING}:"
            f" write {found.embedded} itself"
        )
    if foreign and found.kind is Kind.LOOPBACK:
        return (
            f"{description}; allowPrivateNetwork lets only the configured endpoint itself be on"
            " loopback, not a redirect target or a token service it names"
        )
    if allow_private:
        return None
    return f"{description}; set {SETTING} to allow private networks"


@dataclass(frozen=True, slots=True)
class OutboundURL:
    scheme: str
    host: str  # a lower-case DNS name, a dotted quad, or a compressed IPv6 address
    port: int  # the explicit port, else the scheme's default
    explicit_port: bool
    path: str
    query: str
    fragment: str
    address: IPAddress | None  # None for a DNS name

    @property
    def origin(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.explicit_port else host


def parse_host(host: str) -> IPAddress | None:
    """The address a host names (None for a DNS name), or OutboundURLError when the host is
    not spelled in one canonical way. An IPv6 address comes without brackets."""
    if not host:
        raise OutboundURLError("the URL has no host")
    if not host.isascii() or not host.isprintable():
        raise OutboundURLError(
            f"{GUARD}: host {host!r} has characters outside ASCII; write a name in its"
            " ASCII (xn--) form and an address as plain digits"
        )
    if "%" in host:
        raise OutboundURLError(
            f"{GUARD}: host {host!r} is percent-encoded or carries an IPv6 zone id"
        )
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise OutboundURLError(f"{GUARD}: {host!r} is not an IPv6 address") from None
    name = host.lower()
    if name.endswith("."):
        raise OutboundURLError(f"{GUARD}: write the host {host!r} without the trailing dot")
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        octets = [part for part in labels if _OCTET.fullmatch(part) and int(part) <= 255]
        if len(labels) == len(octets) == 4:
            return ipaddress.IPv4Address(name)
        raise OutboundURLError(
            f"{GUARD}: {host!r} is not a canonical IPv4 address; write an address as four"
            " decimal numbers from 0 to 255 without leading zeros (like 192.0.2.10)"
        )
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise OutboundURLError(f"{GUARD}: {host!r} is not a valid host name")
    return None


def _split_authority(authority: str) -> tuple[str, str]:
    """(host without brackets, port text) of `host[:port]` or `[v6][:port]`."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise OutboundURLError(f"{GUARD}: the IPv6 address in {authority!r} is not closed")
        host, rest = authority[1:close], authority[close + 1 :]
        if ":" not in host:
            raise OutboundURLError(f"{GUARD}: brackets may only hold an IPv6 address")
    else:
        if "[" in authority or "]" in authority:
            raise OutboundURLError(f"{GUARD}: stray brackets in the host {authority!r}")
        host, colon, port = authority.partition(":")
        rest = colon + port
    if rest and not rest.startswith(":"):
        raise OutboundURLError(f"{GUARD}: unexpected {rest!r} after the host")
    return host, rest[1:] if rest else ""


def parse_url(url: str) -> OutboundURL:
    """An http(s) URL with its host parsed strictly, or OutboundURLError saying why not."""
    if len(url) > MAX_URL_LENGTH:
        raise OutboundURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise OutboundURLError(
            f"{GUARD}: the URL may hold only visible ASCII characters (no spaces, control"
            " characters or unicode; write a name in its ASCII xn-- form)"
        )
    if "\\" in url:
        raise OutboundURLError(f"{GUARD}: the URL may not contain backslashes")
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _DEFAULT_PORTS:
        raise OutboundURLError("outbound URLs must be http:// or https:// with a host")
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise OutboundURLError("put credentials in the credential settings, not in the URL")
    host, port_text = _split_authority(authority)
    address = parse_host(host)
    port = _DEFAULT_PORTS[scheme]
    if port_text or authority.endswith(":"):
        if not (port_text.isdigit() and len(port_text) <= 5 and 0 < int(port_text) < 65536):
            raise OutboundURLError(f"the port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    tail, _, fragment = tail.partition("#")
    path, _, query = tail.partition("?")
    canonical = host.lower() if address is None else str(address)
    return OutboundURL(scheme, canonical, port, bool(port_text), path, query, fragment, address)


def check_endpoint(url: str, *, allow_private: bool) -> OutboundURL:
    """A configured endpoint's URL, parsed; OutboundURLError when it may not be contacted."""
    parsed = parse_url(url)
    if parsed.address is not None:
        reason = refusal(parsed.address, allow_private=allow_private, foreign=False)
        if reason is not None:
            raise OutboundURLError(f"{GUARD}: {parsed.host} is {reason}")
    return parsed
