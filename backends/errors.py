"""The errors a backend raises. Every message is safe to show: no key, no provider body."""

from __future__ import annotations


class BackendError(Exception):
    """Base class. `retryable` says whether the same request may succeed later."""

    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(BackendError):
    """The provider refused the request's content (a 400, or a 200 with an error body)."""


class AuthenticationFailed(BackendError):
    """401: the API key is wrong or revoked."""


class InsufficientCredits(BackendError):
    """402: the provider account is out of credits."""


class PlanRestricted(BackendError):
    """403: the provider plan does not include this endpoint."""


class RateLimited(BackendError):
    """429: too many queued requests on the account; try again after `retry_after` seconds."""

    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderUnavailable(BackendError):
    """5xx, timeouts or connection errors that outlasted the retries."""

    retryable = True


class ProviderUnreachable(ProviderUnavailable):
    """No connection could be made at all (refused, a name that does not resolve, a connect
    timeout): more often the network or a wrong base URL than a busy provider, so the message
    names where it tried.

    Retryable, unless the caller asked to give up at once (a command-line run, where a person
    waits at the terminal): then `retryable` is False after the first try.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class UnknownProviderJob(BackendError):
    """The provider does not know the job id we asked about (fetch answered 404)."""


class OutputUnavailable(BackendError):
    """An output link is dead (expired or never there): the image cannot be had any more."""


class OutputTooLarge(BackendError):
    """An output is larger than the byte cap we download."""


class OperationNotServed(BackendError):
    """This generator does not serve the operation (a local GPU set up for only some of them).

    Unlike InvalidRequest, it says nothing about the request itself: another generator may
    serve it (see `backends.fallback`)."""
