"""The guarded httpx transport (provider output downloads), against a real server on loopback.

The server is on 127.0.0.1, which the real rule refuses; tests that need "the internet" let
127.0.0.1 alone stand in for it, so every other private address still meets the real rule.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backends.addresses import AddressPolicy, IPAddress, is_public_address
from backends.guarded_http import AddressRefused, guarded_transport, origin_key
from tests.test_fetch import FakeResolver

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=0)
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


def _client(
    resolver: FakeResolver,
    trusted: tuple[str, ...] = (),
    allowed: AddressPolicy = loopback_is_public,
) -> httpx.AsyncClient:
    transport = guarded_transport(trusted, limits=LIMITS, allowed=allowed, resolver=resolver)
    return httpx.AsyncClient(transport=transport, trust_env=False)


async def test_a_name_is_resolved_once_and_the_checked_address_dialled(server: Server) -> None:
    resolver = FakeResolver({"cdn.example": ["127.0.0.1"]})
    async with _client(resolver) as client:
        response = await client.get(f"http://cdn.example:{server.port}/o.png")
    assert response.content == b"\x89PNG"
    assert resolver.lookups == ["cdn.example"]
    assert server.hosts == [f"cdn.example:{server.port}"]  # the name still goes in Host


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
            await client.get(f"http://cdn.example:{server.port}/o.png")
    assert server.hosts == []


async def test_only_the_trusted_origin_is_exempt(server: Server) -> None:
    """With the real rule, loopback is dialled only as the trusted origin: same host and port."""
    resolver = FakeResolver({"localhost": ["127.0.0.1"]})
    trusted = (f"http://127.0.0.1:{server.port}/api",)
    async with _client(resolver, trusted, allowed=is_public_address) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/o.png")
        assert response.content == b"\x89PNG"
        with pytest.raises(AddressRefused):
            await client.get(f"http://127.0.0.1:{server.port + 1}/o.png")
        with pytest.raises(AddressRefused):
            await client.get(f"http://localhost:{server.port}/o.png")
    assert server.hosts == [f"127.0.0.1:{server.port}"]


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
        transport = guarded_transport(
            (),
            limits=LIMITS,
            allowed=loopback_is_public,
            resolver=resolver,
            verify=ssl.create_default_context(cafile=str(cert_path)),
        )
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            response = await client.get(f"https://cdn.example:{port}/o.png")
            assert response.content == b"\x89PNG"
            # Same address, a name the certificate does not cover: TLS still refuses it.
            with pytest.raises(httpx.ConnectError, match=r"(?i)certificate"):
                await client.get(f"https://other.example:{port}/o.png")
    finally:
        await runner.cleanup()


async def test_an_unknown_name_is_a_connect_error() -> None:
    resolver = FakeResolver({})
    async with _client(resolver) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://nowhere.example/o.png")


def test_origin_key_fills_in_default_ports() -> None:
    assert origin_key("https://ModelsLab.com/api") == ("modelslab.com", 443)
    assert origin_key("http://127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert origin_key("http://[::1]/") == ("::1", 80)
