"""The SSRF-safe selfie fetcher, against a real aiohttp server on 127.0.0.1.

The server is on loopback, which the default policy refuses. Tests that need the server to be
"the internet" either pass `allow_private=True`, or (to test redirects into private space) treat
127.0.0.1 alone as public with `address_allowed`, so every other private address still meets
the real rule.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import socket
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import Mock

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from yarl import URL

from bot.fetch import FetchRefused, SafeFetcher, _read_capped, is_public_address

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
CAP = 100_000
BIG = 4 * 1024 * 1024


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@dataclass
class ImageServer:
    port: int
    requests: list[str] = field(default_factory=list)
    stream_written: list[int] = field(default_factory=list)
    stream_aborted: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    most_in_flight: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[ImageServer]:
    state = ImageServer(port=0)

    @web.middleware
    async def record(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        state.requests.append(request.path_qs)
        return await handler(request)

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def octet(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="application/octet-stream")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>hi</html>", content_type="text/html")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="not here")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/hop/{n + 1}")  # relative, resolved against the current URL

    async def nowhere(request: web.Request) -> web.Response:
        return web.Response(status=302)

    async def bad_location(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://[::1"})

    async def declared_huge(request: web.Request) -> web.StreamResponse:
        # Declares 1 GB, sends 10 bytes, then stalls: reading the body would hang.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 1_000_000_000
        await response.prepare(request)
        await response.write(b"\x89PNG\r\n\x1a\n..")
        await state.release.wait()
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        # Chunked (no Content-Length), never ends on its own.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        written = 0
        try:
            while not state.release.is_set():
                await response.write(b"\0" * 65536)
                written += 65536
                state.stream_written.append(written)
                await asyncio.sleep(0)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            state.stream_aborted.set()
            raise
        return response

    async def slow_headers(request: web.Request) -> web.Response:
        await state.release.wait()
        return web.Response(body=PNG, content_type="image/png")

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(PNG)
        await response.prepare(request)
        await response.write(PNG[:10])
        await state.release.wait()
        return response

    async def held(request: web.Request) -> web.Response:
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            await state.release.wait()
        finally:
            state.in_flight -= 1
        return web.Response(body=PNG, content_type="image/png")

    async def big(request: web.Request) -> web.StreamResponse:
        # BIG bytes in small drained writes: the server itself never holds much.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if "chunked" in request.query:
            response.enable_chunked_encoding()
        else:
            response.content_length = BIG
        await response.prepare(request)
        piece = b"\x5a" * 65536
        for _ in range(BIG // len(piece)):
            await response.write(piece)
        return response

    app = web.Application(middlewares=[record])
    app.router.add_get("/img.png", image)
    app.router.add_get("/octet", octet)
    app.router.add_get("/page.html", page)
    app.router.add_get("/missing", missing)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/hop/{n}", hop)
    app.router.add_get("/nowhere", nowhere)
    app.router.add_get("/bad-location", bad_location)
    app.router.add_get("/declared-huge", declared_huge)
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow-headers", slow_headers)
    app.router.add_get("/slow-body", slow_body)
    app.router.add_get("/held", held)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = runner.addresses[0]
    state.port = int(address[1])
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


class FakeResolver:
    """A DNS stand-in: a fixed table, and a log of every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return list(self.table[host])


class FlippingResolver(FakeResolver):
    """Answers with the next list in turn: a DNS server trying to rebind between lookups."""

    def __init__(self, answers: list[list[str]]) -> None:
        super().__init__({})
        self.answers = answers

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


def loopback_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """127.0.0.1 stands in for the internet; everything else meets the real rule."""
    return ip == LOOPBACK or is_public_address(ip)


@pytest.fixture
async def fetchers() -> AsyncIterator[list[SafeFetcher]]:
    made: list[SafeFetcher] = []
    yield made
    for fetcher in made:
        await fetcher.aclose()


MakeFetcher = Callable[..., SafeFetcher]


@pytest.fixture
def make(fetchers: list[SafeFetcher]) -> MakeFetcher:
    """SafeFetcher with test defaults (cap CAP, 5 s timeout), closed after the test."""

    def _make(**kwargs: Any) -> SafeFetcher:
        kwargs.setdefault("max_bytes", CAP)
        kwargs.setdefault("timeout", 5.0)
        fetcher = SafeFetcher(**kwargs)
        fetchers.append(fetcher)
        return fetcher

    return _make


async def refused(fetcher: SafeFetcher, url: str) -> str:
    with pytest.raises(FetchRefused) as info:
        await fetcher.fetch(url)
    return str(info.value)


PRIVATE = "That link points to a private network address"


# --- the address rule, before any connection ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/img.png",
        "http://localhost:{port}/img.png",  # the real system resolver
        "http://[::1]:{port}/img.png",
        "http://10.0.0.1/img.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]:{port}/img.png",
        "http://[::ffff:169.254.169.254]/latest/meta-data",
        "http://0.0.0.0:{port}/img.png",
        "http://224.0.0.1/",
        "http://[fe80::1]/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[fec0::1]/",  # site-local: Python calls it global
        "http://[feff:ffff::1]/",
        "https://192.168.1.1/img.png",
    ],
)
async def test_private_addresses_refused_before_connecting(
    server: ImageServer, make: MakeFetcher, url: str
) -> None:
    message = await refused(make(), url.format(port=server.port))
    assert message.startswith(PRIVATE)
    assert server.requests == []


async def test_hostname_resolving_to_loopback_is_refused(
    server: ImageServer, make: MakeFetcher
) -> None:
    resolver = FakeResolver({"images.example.com": ["127.0.0.1"]})
    message = await refused(make(resolver=resolver), server.url("/img.png", "images.example.com"))
    assert message.startswith(PRIVATE)
    assert server.requests == []


async def test_hostname_resolving_to_site_local_ipv6_is_refused(
    server: ImageServer, make: MakeFetcher
) -> None:
    resolver = FakeResolver({"images.example.com": ["fec0::1"]})
    message = await refused(make(resolver=resolver), server.url("/img.png", "images.example.com"))
    assert message.startswith(PRIVATE)
    assert server.requests == []


async def test_one_private_address_among_public_ones_is_refused(
    server: ImageServer, make: MakeFetcher
) -> None:
    resolver = FakeResolver({"cdn.example.com": ["93.184.216.34", "10.1.2.3"]})
    message = await refused(make(resolver=resolver), server.url("/img.png", "cdn.example.com"))
    assert message.startswith(PRIVATE)
    assert server.requests == []


async def test_connection_goes_to_the_address_that_was_checked(
    server: ImageServer, make: MakeFetcher
) -> None:
    """One lookup per connection, and its answer is what gets dialled: a rebinding DNS server
    that answers "public" first and "private" next cannot slip a connection in between."""
    resolver = FlippingResolver([["127.0.0.1"], ["10.0.0.1"]])
    fetcher = make(resolver=resolver, address_allowed=loopback_is_public)
    assert await fetcher.fetch(server.url("/img.png", "public.example")) == PNG
    assert resolver.lookups == ["public.example"]  # no separate "check" lookup
    message = await refused(fetcher, server.url("/img.png", "public.example"))
    assert message.startswith(PRIVATE)
    assert resolver.lookups == ["public.example", "public.example"]
    assert server.requests == ["/img.png"]


async def test_unknown_host_is_reported(server: ImageServer, make: MakeFetcher) -> None:
    message = await refused(make(resolver=FakeResolver({})), "http://nope.example/img.png")
    assert message.startswith("Could not download that link: the site nope.example was not found")


def test_public_address_rule() -> None:
    assert is_public_address(ipaddress.ip_address("93.184.216.34"))
    assert is_public_address(ipaddress.ip_address("2606:2800:220:1::1"))
    for text in [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",  # noqa: S104
        "255.255.255.255",
        "224.0.0.251",
        "240.0.0.1",
        "::",
        "::1",
        "fc00::1",
        "fe80::1",
        "fec0::1",
        "fed0:1:2::3",
        "ff02::1",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ]:
        assert not is_public_address(ipaddress.ip_address(text)), text


# --- URL shape ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://example.com/img.png", "Only http:// and https:// links"),
        ("file:///etc/passwd", "Only http:// and https:// links"),
        ("javascript:alert(1)", "Only http:// and https:// links"),
        ("http://user:pw@example.com/img.png", "That link contains a user name or password"),
        ("http://user@example.com/img.png", "That link contains a user name or password"),
        ("http:///img.png", "That link has no host name"),
        ("http://example.com/" + "a" * 2048, "That link is too long (over 2,048 characters)"),
        ("http://127.1/img.png", "That link is not a valid web address"),
    ],
)
async def test_malformed_urls_refused(
    server: ImageServer, make: MakeFetcher, url: str, expected: str
) -> None:
    resolver = FakeResolver({"example.com": ["127.0.0.1"]})
    message = await refused(make(allow_private=True, resolver=resolver), url)
    assert message.startswith(expected)
    assert resolver.lookups == []
    assert server.requests == []


# --- successful fetches ---------------------------------------------------------------------


async def test_allow_private_fetches_png_intact(server: ImageServer, make: MakeFetcher) -> None:
    fetcher = make(allow_private=True)
    assert await fetcher.fetch(server.url("/img.png")) == PNG
    assert await fetcher.fetch(server.url("/octet")) == PNG
    assert await fetcher.fetch(server.url("/img.png", "localhost")) == PNG


async def test_query_string_never_logged(
    server: ImageServer, make: MakeFetcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.fetch")
    fetcher = make(allow_private=True)
    assert await fetcher.fetch(server.url("/img.png?token=s3cr3t-t0ken")) == PNG
    await refused(fetcher, server.url("/missing?token=s3cr3t-t0ken"))
    assert f"127.0.0.1:{server.port}" in caplog.text
    assert "s3cr3t" not in caplog.text
    assert "/img.png" not in caplog.text


# --- redirects ------------------------------------------------------------------------------


async def test_redirects_are_followed(server: ImageServer, make: MakeFetcher) -> None:
    resolver = FakeResolver({"public.example": ["127.0.0.1"], "cdn.example": ["127.0.0.1"]})
    fetcher = make(resolver=resolver, address_allowed=loopback_is_public)
    target = server.url("/img.png", "cdn.example")
    assert await fetcher.fetch(server.url(f"/redirect?to={target}", "public.example")) == PNG
    assert resolver.lookups == ["public.example", "cdn.example"]
    assert server.requests[-1] == "/img.png"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://10.0.0.1/img.png", PRIVATE),
        ("http://169.254.169.254/latest/meta-data", PRIVATE),
        ("http://127.0.0.2:{port}/img.png", PRIVATE),  # loopback, but not the stand-in
        ("http://internal.example:{port}/img.png", PRIVATE),  # a name resolving to the LAN
        ("http://[::1]:{port}/img.png", PRIVATE),
        ("file:///etc/passwd", "Only http:// and https:// links"),
        ("http://admin:pw@public.example:{port}/img.png", "That link contains a user name"),
    ],
)
async def test_redirect_target_is_revalidated(
    server: ImageServer, make: MakeFetcher, target: str, expected: str
) -> None:
    resolver = FakeResolver({"public.example": ["127.0.0.1"], "internal.example": ["192.168.1.5"]})
    fetcher = make(resolver=resolver, address_allowed=loopback_is_public)
    start = server.url("/redirect", "public.example")
    to = target.format(port=server.port)
    message = await refused(fetcher, str(URL(start).with_query(to=to)))
    assert message.startswith(expected)
    assert len(server.requests) == 1  # only the redirecting request reached a server


async def test_too_many_redirects(server: ImageServer, make: MakeFetcher) -> None:
    fetcher = make(allow_private=True, max_redirects=3)
    message = await refused(fetcher, server.url("/hop/0"))
    assert message.startswith("That link redirects too many times (more than 3)")
    assert server.requests == ["/hop/0", "/hop/1", "/hop/2", "/hop/3"]


async def test_redirect_without_location(server: ImageServer, make: MakeFetcher) -> None:
    message = await refused(make(allow_private=True), server.url("/nowhere"))
    assert message.startswith("That link answered with a redirect that leads nowhere")


async def test_redirect_to_an_invalid_location(server: ImageServer, make: MakeFetcher) -> None:
    message = await refused(make(allow_private=True), server.url("/bad-location"))
    assert message.startswith("That link redirects to an invalid address")
    assert server.requests == ["/bad-location"]


async def test_every_redirect_hop_is_resolved_and_checked_afresh(
    server: ImageServer, make: MakeFetcher
) -> None:
    """A redirect to the same name is a new connection and a new lookup: a rebinding DNS
    server cannot have its second answer skipped by a kept-alive connection or a cache."""
    resolver = FlippingResolver([["127.0.0.1"], ["10.0.0.1"]])
    fetcher = make(resolver=resolver, address_allowed=loopback_is_public)
    message = await refused(fetcher, server.url("/redirect?to=/img.png", "public.example"))
    assert message.startswith(PRIVATE)
    assert resolver.lookups == ["public.example", "public.example"]
    assert server.requests == ["/redirect?to=/img.png"]


# --- responses ------------------------------------------------------------------------------


async def test_declared_length_over_cap_refused_before_reading(
    server: ImageServer, make: MakeFetcher
) -> None:
    fetcher = make(allow_private=True, max_bytes=1000)
    # The body stalls after 10 bytes: only a refusal based on the header returns in time.
    message = await asyncio.wait_for(refused(fetcher, server.url("/declared-huge")), 3)
    assert message.startswith("That image is larger than 1 KB")


async def test_chunked_body_over_cap_is_cut_off(server: ImageServer, make: MakeFetcher) -> None:
    fetcher = make(allow_private=True, max_bytes=CAP)
    message = await refused(fetcher, server.url("/endless"))
    assert message.startswith("That image is larger than 98 KB")
    await asyncio.wait_for(server.stream_aborted.wait(), 5)  # the connection was dropped
    assert server.stream_written[-1] < 50 * CAP  # far from a drained stream


async def test_read_capped_reads_at_most_limit() -> None:
    protocol = Mock()
    reader = aiohttp.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for _ in range(10):
        reader.feed_data(b"x" * 1000)
    reader.feed_eof()
    data = await _read_capped(reader, 2501)
    assert len(data) == 2501
    assert len(await reader.read()) == 10_000 - 2501  # the rest was never consumed

    small = aiohttp.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    small.feed_data(b"abc")
    small.feed_eof()
    assert await _read_capped(small, 2501) == b"abc"


async def test_concurrent_fetches_are_bounded(server: ImageServer, make: MakeFetcher) -> None:
    fetcher = make(allow_private=True, max_concurrent=2, timeout=5.0)
    fetches = [asyncio.create_task(fetcher.fetch(server.url("/held"))) for _ in range(6)]
    async with asyncio.timeout(3):
        while server.in_flight < 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # time for any fetch beyond the limit to reach the server
    assert server.in_flight == 2
    server.release.set()
    assert await asyncio.gather(*fetches) == [PNG] * 6
    assert server.most_in_flight == 2


async def test_a_fetch_waiting_too_long_for_its_turn_is_refused(
    server: ImageServer, make: MakeFetcher
) -> None:
    fetcher = make(allow_private=True, max_concurrent=1, timeout=5.0, max_wait=0.3)
    holding = asyncio.create_task(fetcher.fetch(server.url("/held")))
    async with asyncio.timeout(3):
        while server.in_flight < 1:
            await asyncio.sleep(0.01)
    message = await refused(fetcher, server.url("/img.png"))
    assert message.startswith("Too many links are being downloaded right now")
    assert server.requests == ["/held"]
    server.release.set()
    assert await holding == PNG
    assert await fetcher.fetch(server.url("/img.png")) == PNG  # the turn was given back


async def test_a_private_address_is_refused_at_once_while_every_turn_is_taken(
    server: ImageServer, make: MakeFetcher
) -> None:
    fetcher = make(address_allowed=loopback_is_public, max_concurrent=1, timeout=5.0)
    holding = asyncio.create_task(fetcher.fetch(server.url("/held")))
    async with asyncio.timeout(3):
        while server.in_flight < 1:
            await asyncio.sleep(0.01)
    async with asyncio.timeout(0.5):  # well inside the 5 s wait for a turn
        message = await refused(fetcher, "http://10.0.0.1/img.png")
    assert message.startswith(PRIVATE)
    server.release.set()
    assert await holding == PNG


@pytest.mark.parametrize("query", ["", "?chunked"])
async def test_a_fetch_holds_its_body_once(
    server: ImageServer, make: MakeFetcher, query: str
) -> None:
    """The body is read into one buffer: not a list of chunks plus their join (twice the size)."""
    fetcher = make(allow_private=True, max_bytes=2 * BIG)
    tracemalloc.start()
    try:
        data = await fetcher.fetch(server.url(f"/big{query}"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == BIG
    assert peak < 1.5 * BIG, f"peak {peak / BIG:.2f}x the body"


async def test_html_refused(server: ImageServer, make: MakeFetcher) -> None:
    message = await refused(make(allow_private=True), server.url("/page.html"))
    assert message.startswith("That link is not an image (it is text/html)")


async def test_404_refused(server: ImageServer, make: MakeFetcher) -> None:
    message = await refused(make(allow_private=True), server.url("/missing"))
    assert message.startswith("That link answered with HTTP 404")


@pytest.mark.parametrize("path", ["/slow-headers", "/slow-body"])
async def test_slow_server_times_out(server: ImageServer, make: MakeFetcher, path: str) -> None:
    fetcher = make(allow_private=True, timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    message = await refused(fetcher, server.url(path))
    assert message.startswith("That link took too long to answer (over 0.3 s)")
    assert loop.time() - started < 3


async def test_connection_refused_is_reported(make: MakeFetcher) -> None:
    # Bind and close a socket to get a loopback port nobody listens on.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    message = await refused(make(allow_private=True), f"http://127.0.0.1:{port}/img.png")
    assert message.startswith("Could not download that link: the site 127.0.0.1 could not be")
    assert "Errno" not in message and "Connect call" not in message


def test_allow_private_and_policy_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        SafeFetcher(max_bytes=1, allow_private=True, address_allowed=loopback_is_public)
    with pytest.raises(ValueError, match="max_concurrent"):
        SafeFetcher(max_bytes=1, max_concurrent=0)
    with pytest.raises(ValueError, match="max_wait"):
        SafeFetcher(max_bytes=1, max_wait=0)
