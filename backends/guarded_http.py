"""An httpx transport that dials only public addresses, and the few origins we chose ourselves.

For downloads from links someone else hands us (a provider's output links, and wherever they
redirect): they must not reach our loopback, our LAN or the cloud metadata service.

The check sits where the connection is made, in httpcore's network backend: the host name is
resolved once, every address must pass `backends.addresses.is_public_address`, and only those
checked addresses are dialled, so no second lookup can answer differently (DNS rebinding). Every
new connection goes through it, a redirect's included, while TLS still verifies the host name.
A trusted origin (the provider's configured base URL: the simulator on loopback in tests and
`--demo`) is dialled as is.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from backends.addresses import (
    AddressPolicy,
    Resolver,
    SystemResolver,
    is_public_address,
    parse_address,
)

_DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressRefused(Exception):
    """A connection would have reached an address the policy refuses.

    httpx passes it through unchanged (it maps only httpcore's own errors).
    """


def origin_key(url: str) -> tuple[str, int]:
    """(host, port) as httpcore names the connection it opens for `url`."""
    parsed = httpx.URL(url)
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS.get(parsed.scheme, 0)
    return parsed.raw_host.decode("ascii").lower(), port


class GuardedNetwork(httpcore.AsyncNetworkBackend):
    """httpcore network backend that checks every address before connecting to it."""

    def __init__(
        self,
        inner: httpcore.AsyncNetworkBackend,
        *,
        trusted: Iterable[tuple[str, int]] = (),
        allowed: AddressPolicy = is_public_address,
        resolver: Resolver | None = None,
    ) -> None:
        self._inner = inner
        self._trusted = frozenset(trusted)
        self._allowed = allowed
        self._resolver: Resolver = resolver or SystemResolver()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if (host.lower(), port) in self._trusted:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in await self._checked_addresses(host, port, timeout):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # _checked_addresses never returns an empty list
        raise failure

    async def _checked_addresses(
        self,
        host: str,
        port: int,
        timeout: float | None,  # noqa: ASYNC109 (the connect timeout, passed along)
    ) -> list[str]:
        literal = parse_address(host)
        if literal is not None:
            texts = [host]
        else:
            try:
                async with asyncio.timeout(timeout):
                    texts = await self._resolver.resolve(host, port)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
            except OSError:
                raise httpcore.ConnectError(f"{host} did not resolve") from None
            if not texts:
                raise httpcore.ConnectError(f"{host} did not resolve")
        for text in texts:
            ip = parse_address(text)
            if ip is None or not self._allowed(ip):
                raise AddressRefused(f"{host} is not a public address")
        return texts

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("a Unix socket is not a public address")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(
    trusted_urls: Iterable[str] = (),
    *,
    limits: httpx.Limits,
    allowed: AddressPolicy = is_public_address,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through `GuardedNetwork`.

    The client using it must pass `trust_env=False`: an environment proxy would do the
    resolving and connecting instead of us.
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, verify=verify)
    # httpx has no public way to choose httpcore's network backend; the pool keeps it here.
    # Checked rather than assumed: a renamed attribute must fail loudly, not unguarded.
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not isinstance(
        inner, httpcore.AsyncNetworkBackend
    ):
        raise RuntimeError("this httpx hides its connection pool: downloads cannot be guarded")
    pool._network_backend = GuardedNetwork(
        inner,
        trusted=[origin_key(url) for url in trusted_urls],
        allowed=allowed,
        resolver=resolver,
    )
    return transport
