"""Guarded downloads (provider output links), against a real server on loopback.

The server is on 127.0.0.1, which the real rule refuses; tests that need "the internet" let
127.0.0.1 alone stand in for it, so every other private address still meets the real rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from backends import guarded_http
from backends.addresses import AddressPolicy, IPAddress, is_public_address
from backends.guarded_http import (
    AddressRefused,
    BadRedirect,
    GuardedDownloads,
    TooManyRedirects,
    certifi_context,
    origin_key,
)
from tests.test_fetch import FakeResolver, FlippingResolver

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def loopback_is_public(ip: IPAddress) -> bool:
    return ip == LOOPBACK or is_public_address(ip)


@dataclass
class Server:
    port: int = 0
    hosts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def image(request: web.Request) -> web.Response:
        state.hosts.append(request.headers.get("Host", ""))
        state.paths.append(request.path_qs)
        assert request.transport is not None
        state.client_ports.append(request.transport.get_extra_info("peername")[1])
        state.cookies.append(request.headers.get("Cookie", ""))
        state.user_agents.append(request.headers.get("User-Agent", ""))
        if "raw" in request.query:  # a Location as it is, even empty or not a URL
            return web.Response(status=302, headers={"Location": request.query["raw"]})
        if "to" in request.query:
            redirect = web.HTTPFound(request.query["to"])
            redirect.set_cookie("visited", "yes")
            raise redirect
        return web.Response(body=b"\x89PNG", content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = int(runner.addresses[0][1])
    try:
        yield state
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _client(
    resolver: FakeResolver,
    trusted: tuple[str, ...] = (),
    allowed: AddressPolicy = loopback_is_public,
    verify: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[GuardedDownloads]:
    options.setdefault("timeout", 5.0)
    downloads = GuardedDownloads(
        trusted,
        max_redirects=2,
        allowed=allowed,
        resolver=resolver,
        verify=verify,
        **options,
    )
    try:
        yield downloads
    finally:
        await downloads.aclose()


async def _body(downloads: GuardedDownloads, url: str) -> bytes:
    async with downloads.get(url) as response:
        return await response.read()


async def test_a_name_is_resolved_once_and_the_checked_address_dialled(server: Server) -> None:
    resolver = FakeResolver({"cdn.example": ["127.0.0.1"]})
    async with _client(resolver) as client:
        assert await _body(client, f"http://cdn.example:{server.port}/o.png") == b"\x89PNG"
        assert await _body(client, f"http://cdn.example:{server.port}/p.png") == b"\x89PNG"
    assert resolver.lookups == ["cdn.example"]
    assert server.hosts == [f"cdn.example:{server.port}"] * 2  # the name still goes in Host


async def test_a_burst_of_first_downloads_opens_one_session(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty downloads at once on fresh downloads: certifi's bundle is read into a TLS context
    once for all of them, not once each (milliseconds of CPU apiece) while the session did not
    exist yet."""
    contexts: list[ssl.SSLContext] = []

    def counted() -> ssl.SSLContext:
        contexts.append(certifi_context())
        return contexts[-1]

    monkeypatch.setattr(guarded_http, "certifi_context", counted)
    resolver = FakeResolver({"cdn.example": ["127.0.0.1"]})
    async with _client(resolver) as client:
        url = f"http://cdn.example:{server.port}/o.png"
        bodies = await asyncio.gather(*(_body(client, url) for _ in range(20)))
    assert bodies == [b"\x89PNG"] * 20
    assert len(contexts) == 1


@pytest.mark.parametrize(
    "addresses",
    [["10.1.2.3"], ["127.0.0.1", "192.168.1.5"], ["fec0::1"], ["::ffff:10.0.0.1"], ["nonsense"]],
)
async def test_a_name_with_any_private_address_is_refused(
    server: Server, addresses: list[str]
) -> None:
    resolver = FakeResolver({"cdn.example": addresses})
    async with _client(resolver) as client:
        with pytest.raises(AddressRefused):
            await _body(client, f"http://cdn.example:{server.port}/o.png")
    assert server.hosts == []


async def test_only_the_trusted_origin_is_exempt(server: Server) -> None:
    """With the real rule, loopback is dialled only as the trusted origin: same host and port."""
    resolver = FakeResolver({"localhost": ["127.0.0.1"]})
    trusted = (f"http://127.0.0.1:{server.port}/api",)
    async with _client(resolver, trusted, allowed=is_public_address) as client:
        assert await _body(client, f"http://127.0.0.1:{server.port}/o.png") == b"\x89PNG"
        with pytest.raises(AddressRefused):
            await _body(client, f"http://127.0.0.1:{server.port + 1}/o.png")
        with pytest.raises(AddressRefused):
            await _body(client, f"http://localhost:{server.port}/o.png")
    assert server.hosts == [f"127.0.0.1:{server.port}"]


@pytest.mark.parametrize(
    "target", ["http://10.0.0.1/x", "http://[::1]/x", "http://private.example/"]
)
async def test_every_redirect_is_checked_before_it_is_dialled(server: Server, target: str) -> None:
    """The first hop is the trusted origin; where it redirects is not."""
    resolver = FakeResolver({"private.example": ["192.168.0.9"]})
    trusted = (f"http://127.0.0.1:{server.port}",)
    async with _client(resolver, trusted, allowed=is_public_address) as client:
        with pytest.raises(AddressRefused):
            await _body(client, f"http://127.0.0.1:{server.port}/o.png?to={target}")
    assert server.hosts == [f"127.0.0.1:{server.port}"]


async def test_redirects_are_followed_up_to_the_limit(server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with _client(FakeResolver({}), (base,), allowed=is_public_address) as client:
        assert await _body(client, f"{base}/a?to=/b?to=/c") == b"\x89PNG"
        with pytest.raises(TooManyRedirects) as too_many:
            await _body(client, f"{base}/a?to=/b?to=/c?to=/d")
        assert too_many.value.limit == 2
        with pytest.raises(aiohttp.InvalidUrlClientError):
            await _body(client, f"{base}/a?to=file:///etc/passwd")
    assert len(server.hosts) == 3 + 3 + 1


@pytest.mark.parametrize(("location", "expected"), [("", None), ("http://[::1", "http://[::1")])
async def test_a_redirect_with_nowhere_to_go_is_refused(
    server: Server, location: str, expected: str | None
) -> None:
    """No Location, or one that is not a URL: an aiohttp.InvalidURL, as a dead link."""
    base = f"http://127.0.0.1:{server.port}"
    async with _client(FakeResolver({}), (base,), allowed=is_public_address) as client:
        with pytest.raises(BadRedirect) as bad:
            await _body(client, str(URL(base).with_path("/a").with_query(raw=location)))
    assert bad.value.location == expected
    assert isinstance(bad.value, aiohttp.InvalidURL)
    assert len(server.hosts) == 1


class Refused(Exception):
    pass


async def test_the_hop_check_sees_every_url_before_it_is_dialled(server: Server) -> None:
    """First the caller's check, then the address rule; what it returns is what is dialled."""
    seen: list[tuple[str, bool]] = []

    def check_hop(url: URL, redirected: bool) -> URL:
        seen.append((str(url), redirected))
        if url.host == "10.0.0.1":
            raise Refused(str(url))
        return url.update_query(checked="yes")

    base = f"http://cdn.example:{server.port}"
    resolver = FakeResolver({"cdn.example": ["127.0.0.1"]})
    async with _client(resolver, check_hop=check_hop) as client:
        assert await _body(client, f"{base}/a?to=/b") == b"\x89PNG"
        assert seen == [(f"{base}/a?to=/b", False), (f"{base}/b", True)]
        with pytest.raises(Refused):
            await _body(client, f"{base}/a?to=http://10.0.0.1/x")
    assert server.paths == [
        "/a?to=/b&checked=yes",
        "/b?checked=yes",
        "/a?to=http://10.0.0.1/x&checked=yes",
    ]


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_without_keep_alive_every_hop_is_a_new_connection_and_lookup(
    server: Server, keep_alive: bool
) -> None:
    resolver = FakeResolver({"cdn.example": ["127.0.0.1"]})
    async with _client(resolver, keep_alive=keep_alive, timeout=None) as client:
        url = f"http://cdn.example:{server.port}/a?to=/b?to=/c"
        assert await _body(client, url) == b"\x89PNG"
    connections = len(set(server.client_ports))
    assert (connections, len(resolver.lookups)) == ((1, 1) if keep_alive else (3, 3))


async def test_a_rebinding_name_is_refused_on_the_next_hop(server: Server) -> None:
    resolver = FlippingResolver([["127.0.0.1"], ["10.0.0.1"]])
    async with _client(resolver, keep_alive=False) as client:
        with pytest.raises(AddressRefused):
            await _body(client, f"http://cdn.example:{server.port}/a?to=/b")
    assert resolver.lookups == ["cdn.example", "cdn.example"]
    assert len(server.hosts) == 1


@pytest.mark.parametrize("cookies", [True, False])
async def test_headers_go_on_every_hop_and_cookies_only_when_kept(
    server: Server, cookies: bool
) -> None:
    resolver = FakeResolver({"cdn.example": ["127.0.0.1"]})
    headers = {"User-Agent": "guarded-test"}
    async with _client(resolver, headers=headers, cookies=cookies) as client:
        assert await _body(client, f"http://cdn.example:{server.port}/a?to=/b") == b"\x89PNG"
    assert server.user_agents == ["guarded-test"] * 2
    assert server.cookies == ["", "visited=yes" if cookies else ""]


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` only (not for 127.0.0.1), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_checks_the_name_while_the_checked_address_is_dialled(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed(tmp_path, "cdn.example")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG", content_type="image/png")

    app = web.Application()
    app.router.add_get("/o.png", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    port = int(runner.addresses[0][1])
    try:
        resolver = FakeResolver({"cdn.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
        verify = ssl.create_default_context(cafile=str(cert_path))
        async with _client(resolver, verify=verify) as client:
            assert await _body(client, f"https://cdn.example:{port}/o.png") == b"\x89PNG"
            # Same address, a name the certificate does not cover: TLS still refuses it.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await _body(client, f"https://other.example:{port}/o.png")
    finally:
        await runner.cleanup()


async def test_an_unknown_name_is_a_connect_error() -> None:
    resolver = FakeResolver({})
    async with _client(resolver) as client:
        with pytest.raises(aiohttp.ClientConnectorError):
            await _body(client, "http://nowhere.example/o.png")


def test_origin_key_fills_in_default_ports() -> None:
    assert origin_key("https://ModelsLab.com/api") == ("modelslab.com", 443)
    assert origin_key("http://127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert origin_key("http://[::1]/") == ("::1", 80)
