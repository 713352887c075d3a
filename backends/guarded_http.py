"""Downloads that dial only public addresses, and the few origins we chose ourselves.

For links someone else hands us (a provider's output links, a selfie link a user sent through
`bot.fetch`, and wherever they redirect): they must not reach our loopback, our LAN or the cloud
metadata service. `GuardedDownloads` is the one mechanism for both.

The check sits where connections are made, in aiohttp's connector: a host name is resolved
once, by `GuardedResolver`, every address must pass the policy (`is_public_address` unless the
caller passes another), and only those checked addresses are dialled, so no second lookup can
answer differently (DNS rebinding); TLS still verifies the host name. aiohttp dials an address
literal without asking the resolver, so `GuardedDownloads` checks a literal itself, on every hop:
redirects are followed here, one checked hop at a time, each hop first through the caller's own
`check_hop` (if any), then the literal check, and only then dialled. A kept-alive connection or
a cached answer was checked when it was made; with `keep_alive=False` there are neither, so
every connection, each redirect hop included, is resolved and checked afresh. A trusted origin
(the provider's configured base URL: the simulator on loopback in tests and `--demo`) is
dialled as is. No proxy from the environment applies: a proxy would do the resolving and
connecting instead of us.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager

import aiohttp
import certifi
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from backends.addresses import (
    AddressPolicy,
    Resolver,
    SystemResolver,
    is_public_address,
    parse_address,
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# A caller's own check of each URL about to be dialled: (url, redirected) -> the URL to dial.
# Called on the first URL (redirected False) and on every redirect target (True), before the
# address checks; it refuses a hop by raising.
HopCheck = Callable[[URL, bool], URL]


class AddressRefused(Exception):
    """A connection would have reached an address the policy refuses.

    Not an OSError, so aiohttp's connector passes it through rather than calling it a failed
    lookup.
    """


class TooManyRedirects(Exception):
    """A link redirected more times than a download allows: `url` answered redirect number
    `limit + 1`."""

    def __init__(self, limit: int, url: URL) -> None:
        super().__init__(f"more than {limit} redirects")
        self.limit = limit
        self.url = url


class BadRedirect(aiohttp.InvalidUrlRedirectClientError):
    """`url` answered a redirect with no Location (`location` None) or one that is not a URL.

    An aiohttp.InvalidURL, as aiohttp's own redirects raise for a Location that is not a URL.
    """

    def __init__(self, url: URL, location: str | None) -> None:
        reason = "no Location" if location is None else "a Location that is not a URL"
        super().__init__(url, f"a redirect with {reason}")
        self.location = location


def origin_key(url: str | URL) -> tuple[str, int]:
    """(host, port) as aiohttp's connector names the connection it opens for `url`."""
    parsed = URL(url)
    if parsed.raw_host is None or parsed.port is None:
        raise ValueError("the URL has no host")
    return parsed.raw_host.lower(), parsed.port


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses a name unless every address it has passes the policy.

    The connector dials exactly what this returns, so the checked address is the connected one.
    A name that does not resolve (or has no address of the family asked for) is an OSError; a
    refused one is `AddressRefused`, which aiohttp passes through as it is.
    """

    def __init__(
        self,
        *,
        allowed: AddressPolicy,
        resolver: Resolver,
        trusted: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        self._trusted = trusted
        self._allowed = allowed
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            texts = await self._resolver.resolve(host, port)
        except OSError:
            raise OSError(f"{host} did not resolve") from None
        trusted = (host.lower(), port) in self._trusted
        results: list[ResolveResult] = []
        for text in texts:
            ip = parse_address(text)
            if ip is None or not (trusted or self._allowed(ip)):
                raise AddressRefused(f"{host} is not a public address")
            ip_family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, ip_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(ip),
                    port=port,
                    family=ip_family,
                    proto=socket.IPPROTO_TCP,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"{host} did not resolve")
        return results

    async def close(self) -> None:
        pass


class GuardedDownloads:
    """GET requests to links from outside, every connection and every redirect checked.

    Made lazily in the running event loop by its first request; `aclose` ends it. `timeout`
    bounds each hop (None: no bound here, the caller sets its own). `headers` go with every
    request; `cookies=False` neither keeps nor sends any; `keep_alive=False` opens a new
    connection, with a new lookup, for every request.
    """

    def __init__(
        self,
        trusted_urls: Iterable[str] = (),
        *,
        timeout: float | None,
        max_redirects: int,
        connections: int = 200,
        allowed: AddressPolicy = is_public_address,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
        keep_alive: bool = True,
        cookies: bool = True,
        check_hop: HopCheck | None = None,
    ) -> None:
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        self._trusted = frozenset(origin_key(url) for url in trusted_urls)
        self._allowed = allowed
        self._resolver: Resolver = resolver or SystemResolver()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_redirects = max_redirects
        self._connections = connections
        self._verify = verify
        self._headers = dict(headers or {})
        self._keep_alive = keep_alive
        self._cookies = cookies
        self._check_hop = check_hop
        self._session: aiohttp.ClientSession | None = None
        # The first downloads of a burst wait for one opening: each would otherwise read
        # certifi's bundle into a TLS context of its own (milliseconds of CPU apiece).
        self._opening = asyncio.Lock()

    async def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            async with self._opening:
                if self._session is None:
                    self._session = await self._open()
        return self._session

    async def _open(self) -> aiohttp.ClientSession:
        tls = self._verify or await asyncio.to_thread(certifi_context)
        connector = aiohttp.TCPConnector(
            limit=self._connections,
            resolver=GuardedResolver(
                trusted=self._trusted, allowed=self._allowed, resolver=self._resolver
            ),
            ssl=tls,
            force_close=not self._keep_alive,
            use_dns_cache=self._keep_alive,
        )
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            headers=self._headers,
            cookie_jar=None if self._cookies else aiohttp.DummyCookieJar(),
            timeout=self._timeout,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @asynccontextmanager
    async def get(self, url: str | URL) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response at the end of `url`'s redirects; its body is not read yet.

        Raises AddressRefused, TooManyRedirects, BadRedirect, TimeoutError,
        aiohttp.ClientError, or what `check_hop` raises.
        """
        target = self._checked(URL(url), redirected=False)
        session = await self._opened()
        redirects = 0
        while True:
            response = await session.get(target, allow_redirects=False)
            if response.status not in _REDIRECT_STATUSES:
                try:
                    yield response
                finally:
                    response.release()
                return
            response.release()
            if redirects == self._max_redirects:
                raise TooManyRedirects(self._max_redirects, target)
            redirects += 1
            target = self._checked(_redirect_target(target, response), redirected=True)

    def _checked(self, url: URL, *, redirected: bool) -> URL:
        """`url` as it will be dialled, once the caller's check and the literal check pass."""
        if self._check_hop is not None:
            url = self._check_hop(url, redirected)
        url = _http_url(url)
        self.check_literal(url)
        return url

    def check_literal(self, url: URL) -> None:
        """AddressRefused if `url`'s host is an address literal the policy refuses (every hop
        is checked anyway; a caller may refuse a link at once, before waiting for its turn)."""
        host = url.raw_host or ""
        ip = parse_address(host)
        if ip is None or origin_key(url) in self._trusted:
            return  # a name: the resolver checks it
        if not self._allowed(ip):
            raise AddressRefused(f"{host} is not a public address")


def certifi_context() -> ssl.SSLContext:
    """TLS client settings with certifi's certificate authorities (it reads a file)."""
    return ssl.create_default_context(cafile=certifi.where())


def _redirect_target(url: URL, response: aiohttp.ClientResponse) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise BadRedirect(url, None)
    try:
        return url.join(URL(location))
    except (ValueError, TypeError):
        raise BadRedirect(url, location) from None


def _http_url(url: URL) -> URL:
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise aiohttp.InvalidUrlClientError(url, "is not an http(s) URL")
    return url
