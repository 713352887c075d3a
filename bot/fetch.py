"""Downloads a selfie from a URL a user sent, without letting that URL reach our own network.

The URL is hostile input. It may point (directly, through DNS, or through a redirect) at the
loopback interface, the LAN, the cloud metadata service (169.254.169.254) or an internal admin
page; it may send an endless body, a web page instead of an image, or never answer. `SafeFetcher`
refuses all of these with a short message the user can act on (`FetchRefused`).

How the address rule is enforced, without a DNS-rebinding window: the download is a
`backends.guarded_http.GuardedDownloads`, the same mechanism as the provider's output downloads.

* IP-literal hosts (`http://10.0.0.1/`, `http://[::1]/`) are checked before they are dialled.
  aiohttp never resolves them, so the checked address is the one it connects to.
* Host names are resolved inside the connection itself, by `GuardedResolver`, which resolves the
  name once, refuses unless *every* address is allowed, and hands the connector only those
  checked addresses. There is no second lookup that a hostile DNS server could answer
  differently, and the DNS cache and keep-alive are off here (`keep_alive=False`), so each
  connection (every redirect hop included) is checked afresh. TLS SNI and the Host header still
  carry the host name, because aiohttp only swaps the address it dials.
* System proxies are ignored: a proxy would do the resolving for us.
* Redirects are followed one hop at a time, and every new URL goes through the same checks from
  scratch: this module's own (`SafeFetcher._check_url`: length, scheme, credentials, host,
  malformed literals), then the address rule.

Testability. Two seams, both keyword arguments:

* `resolver` (the `Resolver` protocol) replaces the system's getaddrinfo, so a test can make
  `public.example` resolve to whatever it needs without any real DNS.
* `address_allowed` replaces the address rule (`is_public_address` by default). A test that needs
  a "public" server but only has one on loopback passes
  `lambda ip: ip == IPv4Address("127.0.0.1") or is_public_address(ip)`: 127.0.0.1 stands in for
  the internet while every other private address (10.0.0.1, 127.0.0.2, 169.254.169.254, ...)
  is still refused by the real rule, so redirects into private space can be tested end to end.
  `allow_private=True` is the operator's switch (a LAN deployment): it lifts the address rule and
  nothing else; it cannot be combined with `address_allowed`.

The bytes returned are not decoded here; the caller sanitises them as an image.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from yarl import URL

from backends.addresses import (
    AddressPolicy,
    IPAddress,
    Resolver,
    SystemResolver,
    is_public_address,
    parse_address,
)
from backends.guarded_http import (
    AddressRefused,
    BadRedirect,
    GuardedDownloads,
    TooManyRedirects,
)
from bot.i18n import _, number

__all__ = [
    "AddressPolicy",
    "FetchRefused",
    "IPAddress",
    "Resolver",
    "SafeFetcher",
    "SystemResolver",
    "is_public_address",
]

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
_SCHEMES = frozenset({"http", "https"})
_MB = 1024 * 1024
_HEADERS = {
    "User-Agent": "headshot-bot (selfie fetch)",
    "Accept": "image/*, application/octet-stream;q=0.5",
    # Compressed bodies would be inflated before the size cap sees them; ask for none.
    "Accept-Encoding": "identity",
}


class FetchRefused(Exception):
    """The URL was refused or could not be fetched.

    str(exc) is a short message for the user, in the language being written in where it was
    raised, e.g. "That link points to a private network address: send a public image link or
    attach the file."
    """


def _allow_everything(_ip: IPAddress) -> bool:
    return True


def _looks_like_ip_literal(host: str) -> bool:
    """Mirrors aiohttp's own test for "this host is an address, do not resolve it"."""
    return ":" in host or host.replace(".", "").isdigit()


def _origin(url: URL) -> str:
    """scheme://host[:port] for log lines: never the path or query (they may hold tokens)."""
    try:
        return str(url.origin())
    except ValueError:
        return f"{url.scheme}://{url.raw_host or '?'}"


def _figure(value: float) -> str:
    """A number in the language's own form, with its decimals (up to 3): 0.3, 15, 2,5."""
    digits = next((d for d in range(4) if round(value, d) == value), 3)
    return number(value, digits)


def _too_large(max_bytes: int) -> FetchRefused:
    if max_bytes >= _MB // 10:
        return FetchRefused(
            _(
                "That image is larger than {size} MB: send a smaller one, or attach the file.",
                size=_figure(round(max_bytes / _MB, 1)),
            )
        )
    return FetchRefused(
        _(
            "That image is larger than {size} KB: send a smaller one, or attach the file.",
            size=_figure(max(1, round(max_bytes / 1024))),
        )
    )


def _sanitise_for_message(value: str, limit: int = 60) -> str:
    """A server-supplied string made safe to echo to the user (no markup, no control chars)."""
    kept = "".join(c for c in value if c.isascii() and (c.isalnum() or c in "/+-._"))
    return kept[:limit] or "unknown"


def _private_address_refusal(refused: AddressRefused) -> FetchRefused:
    log.info("fetch refused: %s", refused)  # names the host only
    return FetchRefused(
        _(
            "That link points to a private network address: send a public image link or attach "
            "the file."
        )
    )


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytearray:
    """Read until end of stream or `limit` bytes, whichever comes first; never more.

    Into one growing buffer, returned as is: a list of chunks joined at the end would hold
    every byte twice at the peak.
    """
    received = bytearray()
    while len(received) < limit:
        chunk = await stream.read(limit - len(received))
        if not chunk:
            break
        received += chunk
    return received


class SafeFetcher:
    """Fetches an image URL under an SSRF-safe policy (see the module docstring).

    `fetch` raises `FetchRefused` for every refusal and every failure; its message is meant
    for the user. One instance serves many callers, `max_concurrent` downloads at a time: each
    holds up to `max_bytes`, and a burst of updates (Telegram hands over up to 256 at once) must
    not hold that many bodies at once. A caller waits up to `max_wait` (default: `timeout`)
    for its turn, then is refused. Call `aclose` when done.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float = 15.0,
        max_redirects: int = 3,
        allow_private: bool = False,
        resolver: Resolver | None = None,
        address_allowed: AddressPolicy | None = None,
        max_concurrent: int = 8,
        max_wait: float | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if max_wait is not None and max_wait <= 0:
            raise ValueError("max_wait must be positive")
        if allow_private and address_allowed is not None:
            raise ValueError("pass allow_private or address_allowed, not both")
        self._max_bytes = max_bytes
        self._timeout = timeout
        # One overall timeout (in `fetch`) bounds every hop and the body together.
        self._downloads = GuardedDownloads(
            timeout=None,
            max_redirects=max_redirects,
            allowed=_allow_everything if allow_private else address_allowed or is_public_address,
            resolver=resolver,
            headers=_HEADERS,
            keep_alive=False,
            cookies=False,
            check_hop=self._check_hop,
        )
        self._turns = asyncio.Semaphore(max_concurrent)
        self._max_wait = timeout if max_wait is None else max_wait
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        await self._downloads.aclose()

    async def fetch(self, url: str) -> bytearray:
        """Download the image at `url` and return its raw bytes (a bytearray: not copied)."""
        if self._closed:
            raise RuntimeError("SafeFetcher is closed")
        current = self._check_url(url)
        try:
            self._downloads.check_literal(current)  # refused at once, not after a wait
        except AddressRefused as exc:
            raise _private_address_refusal(exc) from None
        try:
            async with asyncio.timeout(self._max_wait):
                await self._turns.acquire()
        except TimeoutError:
            log.warning("fetch refused: every download slot stayed busy for %gs", self._max_wait)
            raise FetchRefused(
                _(
                    "Too many links are being downloaded right now: try again in a minute, or "
                    "attach the file."
                )
            ) from None
        try:
            return await self._fetch_in_turn(current)
        finally:
            self._turns.release()

    async def _fetch_in_turn(self, current: URL) -> bytearray:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._download(current)
        except TimeoutError:
            log.info("fetch timed out after %gs: %s", self._timeout, _origin(current))
            raise FetchRefused(
                _(
                    "That link took too long to answer (over {seconds} s): send a public image "
                    "link or attach the file.",
                    seconds=_figure(self._timeout),
                )
            ) from None

    async def _download(self, url: URL) -> bytearray:
        """The image at the end of `url`'s redirects; every failure but a timeout is a
        `FetchRefused`. `_check_hop` logs each hop's origin before it is dialled."""
        try:
            async with self._downloads.get(url) as response:
                return await self._read_image(response)
        except (FetchRefused, TimeoutError):
            raise
        except AddressRefused as exc:
            raise _private_address_refusal(exc) from None
        except TooManyRedirects as exc:
            log.info("fetch refused: more than %d redirects: %s", exc.limit, _origin(exc.url))
            raise FetchRefused(
                _(
                    "That link redirects too many times (more than {count}): send the final "
                    "link to the image, or attach the file.",
                    count=number(exc.limit),
                )
            ) from None
        except BadRedirect as exc:
            log.info("fetch refused: a redirect with no valid Location: %s", _origin(URL(exc.url)))
            raise _bad_redirect(exc) from None
        except aiohttp.ClientError as exc:
            log.info("fetch failed (%s): %s", type(exc).__name__, _origin(url))
            raise FetchRefused(self._describe_failure(exc)) from None
        except OSError as exc:
            log.info("fetch failed (%s): %s", type(exc).__name__, _origin(url))
            raise FetchRefused(
                _(
                    "Could not download that link: the connection failed. Check the link, "
                    "or attach the file instead."
                )
            ) from None

    def _check_hop(self, url: URL, redirected: bool) -> URL:
        """`GuardedDownloads`' per-hop hook: this module's checks, on every URL it dials (the
        first one passed them in `fetch`, before its turn)."""
        checked = self._check_url(str(url), redirected=True) if redirected else url
        log.info("fetch redirected to %s" if redirected else "fetching %s", _origin(checked))
        return checked

    def _check_url(self, raw: str, *, redirected: bool = False) -> URL:
        """Length, scheme, credentials, host, and a host that looks like an IP literal but is
        not a valid one. Addresses are `GuardedDownloads`' to check."""
        if len(raw) > MAX_URL_LENGTH:
            raise FetchRefused(
                _(
                    "The address that link redirects to is too long (over {count} characters): "
                    "send a public image link or attach the file.",
                    count=number(MAX_URL_LENGTH),
                )
                if redirected
                else _(
                    "That link is too long (over {count} characters): send a public image link "
                    "or attach the file.",
                    count=number(MAX_URL_LENGTH),
                )
            )
        try:
            url = URL(raw.strip())
        except (ValueError, TypeError):
            raise FetchRefused(
                _(
                    "The address that link redirects to is not a valid web address: send a "
                    "public image link or attach the file."
                )
                if redirected
                else _(
                    "That link is not a valid web address: send a public image link or attach "
                    "the file."
                )
            ) from None
        if url.scheme not in _SCHEMES:
            raise FetchRefused(
                _(
                    "Only http:// and https:// links can be downloaded: send a web link to the "
                    "image or attach the file."
                )
            )
        if url.raw_user is not None or url.raw_password is not None:
            raise FetchRefused(
                _(
                    "That link contains a user name or password: send a link that needs no "
                    "login, or attach the file."
                )
            )
        host = url.raw_host
        if not host:
            raise FetchRefused(
                _(
                    "The address that link redirects to has no host name: send a public image "
                    "link or attach the file."
                )
                if redirected
                else _("That link has no host name: send a public image link or attach the file.")
            )
        if _looks_like_ip_literal(host) and parse_address(host) is None:
            shown = _sanitise_for_message(host)
            raise FetchRefused(
                _(
                    "The address that link redirects to is not a valid web address "
                    "({host}): send a public image link or attach the file.",
                    host=shown,
                )
                if redirected
                else _(
                    "That link is not a valid web address ({host}): send a public image "
                    "link or attach the file.",
                    host=shown,
                )
            )
        return url.with_fragment(None)

    async def _read_image(self, response: aiohttp.ClientResponse) -> bytearray:
        url = response.url
        if response.status != 200:
            log.info("fetch refused: HTTP %d from %s", response.status, _origin(url))
            raise FetchRefused(
                _(
                    "That link answered with HTTP {status}: send a link that opens the image "
                    "itself, or attach the file.",
                    status=str(response.status),
                )
            )
        # No Content-Type at all means "unknown bytes" (RFC 9110 8.3), i.e. octet-stream.
        content_type = response.content_type.lower()
        if not (content_type.startswith("image/") or content_type == "application/octet-stream"):
            log.info("fetch refused: content type %r from %s", content_type[:60], _origin(url))
            raise FetchRefused(
                _(
                    "That link is not an image (it is {type}): send a direct link to a JPEG, "
                    "PNG, WebP or HEIC file, or attach it.",
                    type=_sanitise_for_message(content_type),
                )
            )
        too_large = _too_large(self._max_bytes)
        declared = response.content_length
        if declared is not None and declared > self._max_bytes:
            log.info("fetch refused: declared %d bytes from %s", declared, _origin(url))
            raise too_large
        data = await _read_capped(response.content, self._max_bytes + 1)
        if len(data) > self._max_bytes:
            log.info("fetch refused: body over %d bytes from %s", self._max_bytes, _origin(url))
            raise too_large
        log.info("fetched %d bytes from %s", len(data), _origin(url))
        return data

    @staticmethod
    def _describe_failure(exc: aiohttp.ClientError) -> str:
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return _(
                "Could not download that link: the site {host} was not found. Check the link, or "
                "attach the file instead.",
                host=_sanitise_for_message(exc.host, limit=80),
            )
        if isinstance(exc, aiohttp.ClientSSLError):
            return _(
                "Could not download that link: the secure connection to {host} failed. Check "
                "the link, or attach the file instead.",
                host=_sanitise_for_message(exc.host, limit=80),
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return _(
                "Could not download that link: the site {host} could not be reached. Check the "
                "link, or attach the file instead.",
                host=_sanitise_for_message(exc.host, limit=80),
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return _(
                "Could not download that link: the connection broke off. Check the link, or "
                "attach the file instead."
            )
        if isinstance(exc, aiohttp.InvalidURL):
            return _(
                "Could not download that link: the address is not valid. Check the link, or "
                "attach the file instead."
            )
        return _(
            "Could not download that link: the server gave an invalid answer. Check the link, "
            "or attach the file instead."
        )


def _bad_redirect(exc: BadRedirect) -> FetchRefused:
    if exc.location is None:
        return FetchRefused(
            _(
                "That link answered with a redirect that leads nowhere: send a public image "
                "link or attach the file."
            )
        )
    return FetchRefused(
        _("That link redirects to an invalid address: send a public image link or attach the file.")
    )
