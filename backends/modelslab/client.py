"""The ModelsLab backend: submit, fetch and download over HTTP, with bounded retries.

Everything goes through aiohttp's client over kept-alive connections: calls and downloads are
on the hot path of every job, and aiohttp costs about a twentieth of httpx's CPU per call
(bench/http_clients.py). API calls (submit, fetch) go to the configured base URL only; output
downloads, whose links come from the provider's answers, go through `GuardedDownloads`
(`backends.guarded_http`), which dials only public addresses and the base URL's origin.

The API key travels in every JSON body, so it must never reach anything that outlives a call:
exceptions are built from our own words (plus the provider's sanitised message), and every
error is raised outside the `except` clause that caught the transport failure, so no
`__context__` chain keeps a transport exception, and what it holds of the request, alive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
from yarl import URL

from backends.base import ProviderResult, RequestSource, ResultStatus, SubmitRequest
from backends.errors import (
    AuthenticationFailed,
    BackendError,
    InsufficientCredits,
    InvalidRequest,
    OutputTooLarge,
    OutputUnavailable,
    PlanRestricted,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    UnknownProviderJob,
)
from backends.guarded_http import (
    AddressRefused,
    BadRedirect,
    GuardedDownloads,
    TooManyRedirects,
    certifi_context,
)
from backends.modelslab import wire
from backends.modelslab.retry import RetryPolicy
from backends.params import MAX_SEED, GenerationParams, Operation, ParameterError

log = logging.getLogger(__name__)
# API calls and downloads: as many connections at once (each), API connections kept open this
# long between calls.
_CONNECTIONS = 200
_API_KEEPALIVE_SECONDS = 60.0

Sleep = Callable[[float], Awaitable[None]]

AUTH_MESSAGE = "ModelsLab rejected the API key: check MODELSLAB_API_KEY"
CREDITS_MESSAGE = "The ModelsLab account is out of credits: top it up at modelslab.com"
# The contract's example 429 asks for 30 s; used when a rate limit names no wait.
DEFAULT_RETRY_AFTER = 30.0
# How a call ended, when it did not go well (each is heard by `on_call`).
CALL_ERRORS = (
    "rate_limited",
    "server_error",
    "timeout",
    "unreachable",
    "bad_answer",
    "refused_key",
    "content_refused",
    "invalid_request",
    "unknown_job",
)
_CONTENT_REFUSAL = re.compile(r"nsfw|not safe|unsafe|inappropriate|prohibited|safety", re.I)
CallListener = Callable[[str], None]
# With `quick_unreachable`, how long the one connection attempt may take.
QUICK_CONNECT_SECONDS = 5.0
# A provider's output link may redirect to its CDN, not around the world.
_MAX_OUTPUT_REDIRECTS = 5


def _plan_message(operation: Operation) -> str:
    return (
        f"The ModelsLab plan does not include {operation}: "
        "upgrade the plan at modelslab.com or turn this command off"
    )


@dataclass(frozen=True)
class _Answer:
    """What an API call answered: its status, body and Retry-After header."""

    status: int
    content: bytes
    retry_after: str | None


@dataclass(frozen=True)
class _Transient:
    """A failed try that another try may fix."""

    reason: str
    rate_limited: bool = False
    retry_after: float | None = None
    # No connection could be made at all (see ProviderUnreachable).
    unreachable: bool = False
    # What it is, for whoever watches the calls (`CallListener`).
    kind: str = "server_error"


class ModelsLabClient:
    """`backends.base.Backend` for ModelsLab's four face endpoints.

    Retries (5xx, 408, timeouts, connection errors, garbled answers, rate limits) happen inside
    submit and fetch, up to `max_attempts` tries; refusals (4xx, error bodies) never retry.
    With `quick_unreachable`, a provider that cannot be connected to at all fails after one
    short try instead (`ProviderUnreachable`, not retryable): for a person at a terminal.
    Selfies travel as data URIs, which ModelsLab reads only with `base64: true` (it then
    answers `.base64` links, which `download_output` decodes).

    Output links come from the provider's answers, so their downloads (redirects included) may
    reach only public addresses, and the configured base URL's origin (`backends.guarded_http`).
    """

    name = "modelslab"

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://modelslab.com",
        *,
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        max_retry_after: float = 120.0,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        quick_unreachable: bool = False,
        on_call: CallListener | None = None,
    ) -> None:
        """`on_call` hears how every API call ended: "ok", or the kind of error (one of
        `CALL_ERRORS`); each try of a retried call is heard."""
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("The ModelsLab API key is empty: set MODELSLAB_API_KEY")
        if not timeout > 0:
            raise ValueError("timeout must be more than 0 seconds")
        self._base_url = _checked_base_url(base_url)
        self._key = api_key
        self._quick_unreachable = quick_unreachable
        self._call_timeout = aiohttp.ClientTimeout(
            total=timeout,
            connect=min(timeout, QUICK_CONNECT_SECONDS) if quick_unreachable else None,
        )
        self._retry = RetryPolicy(max_attempts, backoff_base, backoff_cap, max_retry_after)
        # Made by the first call, in its event loop.
        self._api: aiohttp.ClientSession | None = None
        self._proxy: URL | None = None
        # The first calls of a burst wait for one opening, rather than each reading the
        # environment and certifi's bundle (milliseconds of CPU apiece) for a session of its own.
        self._opening = asyncio.Lock()
        self._downloads = GuardedDownloads(
            [self._base_url],
            timeout=timeout,
            max_redirects=_MAX_OUTPUT_REDIRECTS,
            connections=_CONNECTIONS,
        )
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._on_call: CallListener = on_call or _ignore

    def __repr__(self) -> str:
        return f"ModelsLabClient(base_url={self._base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Nothing to prepare: the first request opens the connection."""

    def listen(self, callback: Callable[[str], object]) -> None:
        """ModelsLab announces finished jobs through webhooks, not through the client."""

    def adopt(self, provider_id: str, request: RequestSource) -> None:
        """Nothing to keep: a job is fetched by its id alone."""

    def owns_output(self, url: str) -> bool:
        return url.startswith(("https://", "http://"))

    async def aclose(self) -> None:
        await self._downloads.aclose()
        if self._api is not None:
            await self._api.close()

    async def _api_session(self) -> tuple[aiohttp.ClientSession, URL | None]:
        if self._api is None:
            async with self._opening:
                if self._api is None:
                    self._api, self._proxy = await self._open_api()
        return self._api, self._proxy

    async def _open_api(self) -> tuple[aiohttp.ClientSession, URL | None]:
        # An operator's HTTPS_PROXY (and NO_PROXY) applies, as it always has. Looked up once:
        # with aiohttp's trust_env, every call would read the environment and ~/.netrc again,
        # in a worker thread. Files are read in a thread, not the loop.
        proxy = await asyncio.to_thread(_env_proxy, URL(self._base_url))
        tls = await asyncio.to_thread(certifi_context)
        connector = aiohttp.TCPConnector(
            limit=_CONNECTIONS, keepalive_timeout=_API_KEEPALIVE_SECONDS, ssl=tls
        )
        return aiohttp.ClientSession(connector=connector), proxy

    # --- generation -----------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> ProviderResult:
        params = _validated(request.params)
        if params.limits.seed_required and params.seed is None:
            # The endpoint insists on a seed; picking it here keeps the result reproducible.
            params = params.with_seed(self._rng.randint(0, MAX_SEED))
            request = dataclasses.replace(request, params=params)
        body = wire.build_submit_body(request, key=self._key)
        endpoint = wire.ENDPOINTS[params.operation]
        reply = await self._post(endpoint.submit_path, body, params.operation, provider_id=None)
        if wire.is_error(reply) and wire.parse_id(reply.get("id")) is None:
            raise self._refusal(reply, params.operation, provider_id=None)
        result = self._parse(reply)
        if result.status is ResultStatus.PROCESSING and result.provider_id is None:
            raise ProviderUnavailable("ModelsLab said the job is processing but gave no job id")
        if result.seed is None and params.seed is not None:
            result = dataclasses.replace(result, seed=params.seed)
        log.debug(
            "ModelsLab %s submitted: %s id=%s", params.operation, result.status, result.provider_id
        )
        return result

    async def fetch(self, operation: Operation, provider_id: str) -> ProviderResult:
        op = _operation(operation)
        if not isinstance(provider_id, str) or not provider_id.strip():
            raise InvalidRequest("provider_id must be a non-empty job id")
        provider_id = provider_id.strip()
        path = wire.ENDPOINTS[op].fetch_path(provider_id)
        reply = await self._post(path, wire.fetch_body(self._key), op, provider_id=provider_id)
        # An error without an id may be about the call (the key, the id) rather than the job.
        if (
            wire.is_error(reply)
            and wire.parse_id(reply.get("id")) is None
            and wire.classify_error(reply) is not wire.ErrorKind.INVALID
        ):
            raise self._refusal(reply, op, provider_id=provider_id)
        # The answer is about the job asked for, whatever id its body carries: a different id
        # would read as the job having moved (see Backend.fetch).
        result = dataclasses.replace(self._parse(reply), provider_id=provider_id)
        log.debug("ModelsLab %s job %s: %s", op, provider_id, result.status)
        return result

    def _parse(self, reply: dict[str, Any]) -> ProviderResult:
        return wire.parse_result(reply, secrets=(self._key,))

    # --- one API call, retried ------------------------------------------------------------

    async def _post(
        self, path: str, body: dict[str, Any], operation: Operation, *, provider_id: str | None
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            outcome = await self._post_once(path, body, operation, provider_id)
            if isinstance(outcome, dict):
                return outcome
            if outcome.unreachable and self._quick_unreachable:
                raise ProviderUnreachable(self._unreachable_message(), retryable=False)
            wait = self._wait(outcome, attempt)
            attempt += 1
            if wait is None or attempt >= self._retry.max_attempts:
                if outcome.unreachable:
                    raise ProviderUnreachable(self._unreachable_message())
                raise _exhausted(outcome, attempt)
            log.warning(
                "ModelsLab %s: %s; try %d of %d in %.1fs",
                path,
                outcome.reason,
                attempt + 1,
                self._retry.max_attempts,
                wait,
            )
            await self._sleep(wait)

    def _unreachable_message(self) -> str:
        shown = URL(self._base_url).with_user(None)
        return f"cannot reach ModelsLab at {shown}: check the network or MODELSLAB_BASE_URL"

    def _wait(self, outcome: _Transient, attempt: int) -> float | None:
        if outcome.rate_limited:
            return self._retry.rate_limit_wait(attempt, outcome.retry_after, self._rng)
        return self._retry.backoff(attempt, self._rng)

    async def _post_once(
        self, path: str, body: dict[str, Any], operation: Operation, provider_id: str | None
    ) -> dict[str, Any] | _Transient:
        outcome = await self._post_outcome(path, body, operation, provider_id)
        if isinstance(outcome, _Transient):
            self._on_call(outcome.kind)
        elif not wire.is_error(outcome):
            self._on_call("ok")
        # An error body is heard where it is read (`_refusal`), or is a failed job's answer.
        return outcome

    async def _post_outcome(
        self, path: str, body: dict[str, Any], operation: Operation, provider_id: str | None
    ) -> dict[str, Any] | _Transient:
        response = await self._send(path, body)
        if isinstance(response, _Transient):
            return response
        reply = wire.json_object(response.content)
        code = response.status
        if 200 <= code < 300:
            return self._accepted(reply, code)
        if code == 429:
            return _rate_limit(reply, response.retry_after)
        if code == 408 or code >= 500:
            kind = "timeout" if code in (408, 504) else "server_error"
            return _Transient(f"ModelsLab is unavailable (HTTP {code})", kind=kind)
        raise self._http_error(code, reply, path, operation, provider_id)

    async def _send(self, path: str, body: dict[str, Any]) -> _Answer | _Transient:
        try:
            session, proxy = await self._api_session()
            async with session.post(
                self._base_url + path,
                json=body,
                headers={"Accept": "application/json"},
                timeout=self._call_timeout,
                allow_redirects=False,
                proxy=proxy,
            ) as response:
                return _Answer(
                    response.status, await response.read(), response.headers.get("retry-after")
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            # Refused, a name that does not resolve, or nothing answering the connect at all.
            return _Transient("could not reach ModelsLab", unreachable=True, kind="unreachable")
        except TimeoutError:
            return _Transient("ModelsLab did not answer in time", kind="timeout")
        except aiohttp.ClientError:
            return _Transient("could not reach ModelsLab")

    @staticmethod
    def _accepted(reply: dict[str, Any] | None, code: int) -> dict[str, Any] | _Transient:
        if reply is None or not wire.is_known(reply):
            return _Transient(
                f"ModelsLab sent an unreadable answer (HTTP {code})", kind="bad_answer"
            )
        if wire.is_error(reply) and wire.classify_error(reply) is wire.ErrorKind.RATE_LIMIT:
            return _rate_limit(reply, None)
        return reply

    def _http_error(
        self,
        code: int,
        reply: dict[str, Any] | None,
        path: str,
        operation: Operation,
        provider_id: str | None,
    ) -> BackendError:
        if code in (401, 402, 403):
            self._on_call("refused_key")
        elif code in (404, 410):
            self._on_call("unknown_job" if provider_id is not None else "invalid_request")
        elif reply is None:
            self._on_call("invalid_request")
        if code == 401:
            return AuthenticationFailed(AUTH_MESSAGE)
        if code == 402:
            return InsufficientCredits(CREDITS_MESSAGE)
        if code == 403:
            return PlanRestricted(_plan_message(operation))
        if code in (404, 410):
            if provider_id is not None:
                return UnknownProviderJob(f"ModelsLab does not know job {provider_id}")
            return InvalidRequest(f"ModelsLab has no endpoint at {path}: check the base URL")
        if reply is not None:
            return self._refusal(reply, operation, provider_id)
        return InvalidRequest(f"ModelsLab refused the request (HTTP {code})")

    def _refusal(
        self, reply: dict[str, Any], operation: Operation, provider_id: str | None
    ) -> BackendError:
        """The error for an error body: by its text, since a 200 can carry any of them."""
        kind = wire.classify_error(reply)
        self._on_call(_call_error(kind, wire.message_of(reply, secrets=(self._key,))))
        if kind is wire.ErrorKind.AUTH:
            return AuthenticationFailed(AUTH_MESSAGE)
        if kind is wire.ErrorKind.CREDITS:
            return InsufficientCredits(CREDITS_MESSAGE)
        if kind is wire.ErrorKind.PLAN:
            return PlanRestricted(_plan_message(operation))
        if kind is wire.ErrorKind.UNKNOWN_JOB and provider_id is not None:
            return UnknownProviderJob(f"ModelsLab does not know job {provider_id}")
        message = wire.message_of(reply, secrets=(self._key,))
        if not message:
            return InvalidRequest("ModelsLab refused the request without saying why")
        return InvalidRequest(f"ModelsLab refused the request: {message}")

    # --- outputs --------------------------------------------------------------------------

    async def download_output(self, url: str, *, max_bytes: int) -> bytes:
        """The image behind an output link, at most `max_bytes` of it.

        Not retried here: the job engine knows how long the link lives and decides.
        A `.base64` link holds base64 text; its decoded image is what is returned.
        """
        target = _output_url(url)
        encoded = target.path.endswith(".base64")
        limit = _base64_length(max_bytes) if encoded else max_bytes
        outcome = await self._stream(target, limit, max_bytes)
        if isinstance(outcome, BackendError):
            raise outcome
        if not encoded:
            return outcome
        image = wire.decode_base64_output(outcome)
        if len(image) > max_bytes:
            raise OutputTooLarge(f"the output is larger than {max_bytes} bytes")
        return image

    async def _stream(self, url: URL, limit: int, max_bytes: int) -> bytes | BackendError:
        """The body, up to `limit` bytes; an error (returned, not raised: see the module doc)."""
        too_large = OutputTooLarge(f"the output is larger than {max_bytes} bytes")
        try:
            async with self._downloads.get(url) as response:
                problem = _download_problem(response, limit, too_large)
                if problem is not None:
                    return problem
                body = await _read_capped(response, limit)
                return too_large if body is None else body
        except AddressRefused:
            log.warning("output link refused: %s leads to a private address", _origin(url))
            return OutputUnavailable("the output link leads to a private network address")
        except TooManyRedirects:
            return OutputUnavailable("the output link redirects too many times")
        except BadRedirect:
            return OutputUnavailable("the output link redirects nowhere valid")
        except TimeoutError:
            return ProviderUnavailable("the output download timed out")
        except aiohttp.InvalidURL:
            return OutputUnavailable("the output link is not an http(s) URL")
        except aiohttp.ClientError:
            return ProviderUnavailable("could not download the output")


# --- helpers ------------------------------------------------------------------------------


def _env_proxy(url: URL) -> URL | None:
    """The proxy the environment names for `url` (HTTP(S)_PROXY, NO_PROXY), if any; aiohttp
    sends the credentials in its URL as Proxy-Authorization."""
    named = urllib.request.getproxies().get(url.scheme)
    if not named or urllib.request.proxy_bypass(url.host or ""):
        return None
    return URL(named)


def _checked_base_url(base_url: str) -> str:
    try:
        url = URL(base_url)
    except (ValueError, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError("base_url must be an http:// or https:// URL")
    return str(url).rstrip("/")


def _validated(params: GenerationParams) -> GenerationParams:
    # Again, here: a hand-built params object must not reach the network unchecked.
    try:
        params.validate()
    except ParameterError as exc:
        raise InvalidRequest(str(exc)) from exc
    return params


def _operation(operation: Operation | str) -> Operation:
    try:
        return Operation(operation)
    except ValueError:
        pass
    raise InvalidRequest("operation must be one of " + ", ".join(Operation))


def _rate_limit(reply: dict[str, Any] | None, header: str | None) -> _Transient:
    return _Transient(
        "ModelsLab's queue for this account is full",
        rate_limited=True,
        retry_after=wire.retry_after(reply, header),
        kind="rate_limited",
    )


def _call_error(kind: wire.ErrorKind | None, message: str | None) -> str:
    """What an error body is, as one of `CALL_ERRORS`."""
    if kind in (wire.ErrorKind.AUTH, wire.ErrorKind.CREDITS, wire.ErrorKind.PLAN):
        return "refused_key"
    if kind is wire.ErrorKind.UNKNOWN_JOB:
        return "unknown_job"
    if kind is wire.ErrorKind.RATE_LIMIT:
        return "rate_limited"
    if message and _CONTENT_REFUSAL.search(message):
        return "content_refused"
    return "invalid_request"


def _ignore(outcome: str) -> None:
    pass


def _exhausted(outcome: _Transient, attempts: int) -> BackendError:
    if outcome.rate_limited:
        retry_after = (
            outcome.retry_after if outcome.retry_after is not None else DEFAULT_RETRY_AFTER
        )
        return RateLimited(
            f"{outcome.reason}: try again in {retry_after:.0f}s", retry_after=retry_after
        )
    tries = "try" if attempts == 1 else "tries"
    return ProviderUnavailable(f"{outcome.reason}; gave up after {attempts} {tries}")


def _output_url(url: str) -> URL:
    try:
        target = URL(url)
    except (ValueError, TypeError):
        target = None
    if target is None or target.scheme not in ("http", "https") or not target.raw_host:
        raise OutputUnavailable("the output link is not an http(s) URL")
    return target


def _origin(url: URL) -> str:
    """scheme://host[:port] for a log line: an output link's path and query may be secret."""
    port = "" if url.is_default_port() else f":{url.port}"
    return f"{url.scheme}://{url.host}{port}"


def _base64_length(max_bytes: int) -> int:
    # Base64 is 4/3 of the bytes, plus line breaks and a `data:image/...;base64,` prefix.
    encoded = -(-max_bytes // 3) * 4
    return encoded + encoded // 64 + 256


def _download_problem(
    response: aiohttp.ClientResponse, limit: int, too_large: OutputTooLarge
) -> BackendError | None:
    code = response.status
    if code in (404, 410):
        return OutputUnavailable("the output link has expired")
    if code >= 500:
        return ProviderUnavailable(f"the output host is unavailable (HTTP {code})")
    if code != 200:
        return OutputUnavailable(f"the output link answered HTTP {code}")
    # A future link answers an HTML placeholder page until the image exists: not ready yet,
    # rather than gone, so the caller may try again later.
    content_type = response.headers.get("content-type", "").lower()
    if content_type.startswith("text/html"):
        return ProviderUnavailable("the output is not ready yet")
    declared = wire.parse_number(response.headers.get("content-length"))
    if declared is not None and declared > limit:
        return too_large
    return None


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None as soon as more than `limit` bytes have arrived (decompressed: aiohttp
    inflates a compressed body a bounded piece at a time)."""
    received = bytearray()
    async for chunk in response.content.iter_any():
        received += chunk
        if len(received) > limit:
            return None
    return bytes(received)
