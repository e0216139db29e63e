"""The outbound URL guard, the pure part: every spelling of an address an attacker could use to
reach loopback, a private network or cloud metadata is refused before any connection, and
the refusals say why and name the setting as the API spells it.

Every outbound feature (proxy upstreams, replication remotes, scanner adapters) parses its
URLs with this one parser; tests/access/test_outbound_connect.py drives the connect-time guard and
tests/access/test_outbound_api.py the API of a real server.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage.domain.outbound import (
    OutboundURLError,
    check_endpoint,
    classify,
    parse_host,
    parse_url,
)
from moorage.domain.proxy import ProxyConfigError, normalize_url
from moorage.http.outbound import check_url

# Spellings that inet_aton / getaddrinfo read as an address but that are not a dotted quad.
NON_CANONICAL_IPV4 = [
    "2852039166",  # 169.254.169.254
    "0xa9fea9fe",
    "0XA9FEA9FE",
    "0251.0376.0251.0376",
    "169.254.43518",
    "169.254.169.254.",
    "167772161",  # 10.0.0.1
    "10.1",
    "0x0a.0.0.1",
    "012.0.0.1",
    "2130706433",  # 127.0.0.1
    "017700000001",
    "0x7f.1",
    "0x7f000001",
    "127.1",
    "127.0.1",
    "127.0.0.1.",
    "127.000.000.001",
    "0127.0.0.1",
    "127.0.0.01",
    "256.0.0.1",
    "1.2.3.0x4",
    "0",
    "0x",
    "08.8.8.8",
    "4294967295",
    "4294967296",
]

# Spellings that are not a canonical host for reasons other than numbers.
URL_TRICKS = [
    "http://user@127.0.0.1/",
    "http://user:pw@registry.example/",
    "http://registry.example@127.0.0.1/",
    "http://127.0.0.1:80@registry.example/",
    "http://registry.example\\@127.0.0.1/",
    "http://127.0.0.1\\registry.example/",
    "http://[127.0.0.1]/",
    "http://[::1]x/",
    "http://[::1/",
    "http://127.0.0.1]/",
    "http://[[::1]]/",
    "http://[fe80::1%25eth0]/",
    "http://[fe80::1%eth0]/",
    "http://[::1%251]/",
    "http://%31%32%37.0.0.1/",
    "http://127.0.0.%31/",
    "http://local%68ost/",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # fullwidth digits
    "http://127\u30020\u30020\u30021/",  # ideographic full stops
    "http://\u0661\u0662\u0667.0.0.1/",  # Arabic-Indic digits
    "http://127.0.0.1\t/",
    "http://127.0.0.1\n.registry.example/",
    "http://127.0.0.1 /",
    "http://127.0.0.1\x00.registry.example/",
    "http://registry..example/",
    "http://-registry.example/",
    "http://registry.example./",
    "http://localhost./",
    "http://:80/",
    "http:///",
    "http:/127.0.0.1/",
    "http://127.0.0.1:0/",
    "http://127.0.0.1:65536/",
    "http://127.0.0.1:+80/",
    "http://127.0.0.1:0x50/",
    "http://127.0.0.1:80:80/",
    "ftp://registry.example/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/",
    "//registry.example/",
]

# Never contacted, whatever the endpoint allows.
NEVER = [
    "169.254.169.254",
    "169.254.170.2",
    "169.254.0.1",
    "100.100.100.200",
    "168.63.129.16",
    "192.0.0.192",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "255.255.255.255",
    "[fe80::1]",
    "[fe80::a9fe:a9fe]",
    "[febf::1]",
    "[fd00:ec2::254]",
    "[::]",
    "[ff02::1]",
]

# IPv6 forms that carry a non-public IPv4 address: refused even with allowPrivateNetwork.
EMBEDDED = [
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::FFFF:127.0.0.1]",
    "[0:0:0:0:0:ffff:7f00:1]",
    "[::ffff:10.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[::7f00:1]",
    "[::ffff:0:7f00:1]",  # IPv4-translated
    "[2002:7f00:1::]",  # 6to4
    "[2002:a9fe:a9fe::1]",
    "[2002:c0a8:101::1]",
    "[64:ff9b::7f00:1]",  # NAT64
    "[64:ff9b::169.254.169.254]",
    "[64:ff9b:1::a00:1]",  # local-use NAT64
    "[2001:0:7f00:1::1]",  # Teredo, server 127.0.0.1
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1 (obfuscated)
]

# Opened by allowPrivateNetwork for the configured endpoint itself.
PRIVATE = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "198.18.0.1",
    "192.0.2.10",
    "240.0.0.1",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[fd12:3456::1]",
    "[fc00::1]",
    "[2001:db8::1]",
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "[2001:4860:4860::8888]", "[2606:4700:4700::1111]"]


def refusal_of(url: str, *, allow_private: bool) -> str:
    with pytest.raises(OutboundURLError) as caught:
        check_endpoint(url, allow_private=allow_private)
    return str(caught.value)


@pytest.mark.parametrize("host", NON_CANONICAL_IPV4)
@pytest.mark.parametrize("allow_private", [False, True])
def test_non_canonical_ipv4_spellings_are_refused(host: str, allow_private: bool) -> None:
    for url in (f"http://{host}/", f"https://{host}:5000/v2/"):
        message = refusal_of(url, allow_private=allow_private)
        assert "refused by the outbound guard" in message
        assert "canonical IPv4" in message or "trailing dot" in message
    with pytest.raises(OutboundURLError):
        parse_host(host)  # the connect-time check refuses it as well
    with pytest.raises(ProxyConfigError):
        normalize_url(f"http://{host}", allow_private=allow_private)


@pytest.mark.parametrize("url", URL_TRICKS)
@pytest.mark.parametrize("allow_private", [False, True])
def test_url_tricks_are_refused(url: str, allow_private: bool) -> None:
    refusal_of(url, allow_private=allow_private)
    with pytest.raises(OutboundURLError):
        check_url(url, allow_private=allow_private)


@pytest.mark.parametrize("host", NEVER)
@pytest.mark.parametrize("allow_private", [False, True])
def test_link_local_metadata_and_unspecified_are_never_allowed(
    host: str, allow_private: bool
) -> None:
    message = refusal_of(f"http://{host}/", allow_private=allow_private)
    assert "never contacted, even with allowPrivateNetwork" in message
    with pytest.raises(OutboundURLError):
        check_url(f"http://{host}/", allow_private=True, redirect=True)


@pytest.mark.parametrize("host", EMBEDDED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_ipv6_forms_embedding_a_private_ipv4_address_are_refused(
    host: str, allow_private: bool
) -> None:
    message = refusal_of(f"http://{host}:5000/", allow_private=allow_private)
    assert "embedded in an IPv6 address" in message or "never contacted" in message


@pytest.mark.parametrize("host", PRIVATE)
def test_private_addresses_need_allow_private_network(host: str) -> None:
    message = refusal_of(f"http://{host}:5000/", allow_private=False)
    assert "set allowPrivateNetwork (CLI --allow-private-network)" in message
    assert "allow_private_network" not in message
    check_endpoint(f"http://{host}:5000/", allow_private=True)


def test_refusals_name_the_reason() -> None:
    assert "127.0.0.1 is a loopback address" in refusal_of("http://127.0.0.1", allow_private=False)
    assert "10.0.0.1 is a private-network address" in refusal_of(
        "http://10.0.0.1", allow_private=False
    )
    assert "link-local" in refusal_of("http://169.254.169.254", allow_private=True)
    assert "cloud metadata" in refusal_of("http://[fd00:ec2::254]", allow_private=True)
    assert "unspecified" in refusal_of("http://0.0.0.0", allow_private=True)


@pytest.mark.parametrize("host", PUBLIC)
def test_public_addresses_and_names_pass(host: str) -> None:
    check_endpoint(f"https://{host}/v2/", allow_private=False)
    check_endpoint("https://registry-1.docker.io/v2/", allow_private=False)
    check_endpoint("https://0x7f.registry.example/", allow_private=False)  # a name
    check_endpoint("http://under_score.example:8080/", allow_private=False)


def test_urls_are_normalised_to_one_spelling() -> None:
    parsed = parse_url("HTTPS://Registry.Example:8443/Prefix/?q#f")
    assert (parsed.scheme, parsed.host, parsed.port, parsed.path) == (
        "https",
        "registry.example",
        8443,
        "/Prefix/",
    )
    assert parse_url("http://[0:0:0:0:0:0:0:1]:5000").netloc == "[::1]:5000"
    assert parse_url("https://registry.example").origin == ("registry.example", 443)
    assert normalize_url("http://[0:0::1]:5000/x/", allow_private=True) == "http://[::1]:5000/x"
    assert normalize_url("HTTP://Registry.Example/", allow_private=False) == (
        "http://registry.example"
    )


def test_redirect_targets_never_reach_loopback_even_when_private_networks_are_allowed() -> None:
    for target in ("http://127.0.0.1/", "http://[::1]/", "http://169.254.169.254/"):
        with pytest.raises(OutboundURLError, match=r"loopback|never"):
            check_url(target, allow_private=True, redirect=True)
    check_url("http://10.0.0.1/", allow_private=True, redirect=True)
    with pytest.raises(OutboundURLError, match="allowPrivateNetwork"):
        check_url("http://10.0.0.1/", allow_private=False, redirect=True)


def test_embedded_public_addresses_are_judged_by_what_they_embed() -> None:
    # DNS64 synthesises 64:ff9b::/96 addresses for public hosts on IPv6-only networks.
    assert classify(ipaddress.ip_address("64:ff9b::808:808")) is None
    assert classify(ipaddress.ip_address("::ffff:8.8.8.8")) is None
    assert classify(ipaddress.ip_address("2002:808:808::1")) is None
    found = classify(ipaddress.ip_address("2002:7f00:1::"))
    assert found is not None
    assert str(found.embedded) == "127.0.0.1"


def _spell(number: int, parts: int, radixes: list[int], zeros: list[int], upper: bool) -> str:
    """`number` the way inet_aton reads it: 1 to 4 parts, the last one holding the rest."""
    values: list[int] = []
    for index in range(parts - 1):
        values.append((number >> (24 - 8 * index)) & 0xFF)
    rest = number & ((1 << (8 * (5 - parts))) - 1)
    values.append(rest)
    text = []
    for value, radix, zero in zip(values, radixes, zeros, strict=False):
        if radix == 16:
            digits = "0x" + "0" * zero + format(value, "x")
            text.append(digits.upper() if upper else digits)
        elif radix == 8:
            text.append("0" + "0" * zero + format(value, "o"))
        else:
            text.append(str(value))
    return ".".join(text)


@given(
    number=st.integers(0, 2**32 - 1),
    parts=st.integers(1, 4),
    radixes=st.lists(st.sampled_from([8, 10, 16]), min_size=4, max_size=4),
    zeros=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    upper=st.booleans(),
)
def test_every_inet_aton_spelling_is_refused_unless_it_is_the_dotted_quad(
    number: int, parts: int, radixes: list[int], zeros: list[int], upper: bool
) -> None:
    spelling = _spell(number, parts, radixes, zeros, upper)
    # The generator is right: the system reads the spelling as `number`.
    assert socket.inet_aton(spelling) == number.to_bytes(4, "big")
    canonical = str(ipaddress.IPv4Address(number))
    try:
        parsed = parse_host(spelling)
    except OutboundURLError:
        assert spelling != canonical
    else:
        assert spelling == canonical
        assert parsed == ipaddress.IPv4Address(number)
