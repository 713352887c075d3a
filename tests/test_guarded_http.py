"""Guarded downloads (provider output links), against a real server on loopback.

The server is on 127.0.0.1, which the real rule refuses; tests that need "the internet" let
127.0.0.1 alone stand in for it, so every other private address still meets the real rule.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backends.addresses import AddressPolicy, IPAddress, is_public_address
from backends.guarded_http import AddressRefused, GuardedDownloads, TooManyRedirects, origin_key
from tests.test_fetch import FakeResolver

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def loopback_is_public(ip: IPAddress) -> bool:
    return ip == LOOPBACK or is_public_address(ip)


@dataclass
class Server:
    port: int = 0
    hosts: list[str] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def image(request: web.Request) -> web.Response:
        state.hosts.append(request.headers.get("Host", ""))
        if "to" in request.query:
            raise web.HTTPFound(request.query["to"])
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
) -> AsyncIterator[GuardedDownloads]:
    downloads = GuardedDownloads(
        trusted,
        timeout=5.0,
        max_redirects=2,
        allowed=allowed,
        resolver=resolver,
        verify=verify,
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
        with pytest.raises(TooManyRedirects):
            await _body(client, f"{base}/a?to=/b?to=/c?to=/d")
        with pytest.raises(aiohttp.InvalidUrlClientError):
            await _body(client, f"{base}/a?to=file:///etc/passwd")
    assert len(server.hosts) == 3 + 3 + 1


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
