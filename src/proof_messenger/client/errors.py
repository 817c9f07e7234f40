"""SDK exceptions: one class per problem ``code``, rooted in the protocol's error tree.

For every protocol code the SDK raises a subclass of BOTH :class:`ProofMessengerAPIError`
and the protocol class from :mod:`proof_messenger.protocol.errors`, so application code
can write ``except Replayed:`` whether the rejection came from a local ``Verifier`` or from
a relay over HTTP, and ``except ProofMessengerAPIError`` to catch every relay answer.
"""

from __future__ import annotations

from typing import Any

from ..protocol.errors import ERROR_CLASSES, ProofMessengerError

__all__ = [
    "AuthenticationError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProofMessengerAPIError",
    "ProofMessengerClientError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "TransportError",
    "api_error",
    "api_error_class",
]


class ProofMessengerClientError(ProofMessengerError):
    """Anything the SDK raises."""


class TransportError(ProofMessengerClientError):
    """No HTTP answer (connection refused, reset, timeout) after all retries."""

    def __init__(self, detail: str, attempts: int) -> None:
        super().__init__(detail)
        self.attempts = attempts


class ProofMessengerAPIError(ProofMessengerClientError):
    """The relay answered with an RFC 9457 problem; ``code`` is the stable reason."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        problem: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        # Instance values: for protocol codes they equal the protocol class's constants.
        self.status = status  # type: ignore[misc]
        self.code = code  # type: ignore[misc]
        self.problem: dict[str, Any] = problem or {}
        self.request_id = request_id

    @property
    def proof_id(self) -> str | None:
        value = self.problem.get("proof_id")
        return value if isinstance(value, str) else None

    @property
    def audit_event_id(self) -> str | None:
        value = self.problem.get("audit_event_id")
        return value if isinstance(value, str) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, detail={self.detail!r})"


class AuthenticationError(ProofMessengerAPIError):
    """401: missing, unknown or revoked API key."""


class PermissionDeniedError(ProofMessengerAPIError):
    """403 insufficient_scope: the API key lacks the route's scope."""


class NotFoundError(ProofMessengerAPIError):
    """404."""


class InvalidRequestError(ProofMessengerAPIError):
    """400-class request errors that are not proof rejections (bad JSON, bad query...)."""


class PayloadTooLargeError(ProofMessengerAPIError):
    """413: body or batch above the relay's limits."""


class RateLimitedError(ProofMessengerAPIError):
    """429 after all retries; ``retry_after`` in seconds if the relay said."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServiceUnavailableError(ProofMessengerAPIError):
    """5xx after all retries (store unavailable, overloaded, internal error)."""


_HTTP_CLASSES: dict[str, type[ProofMessengerAPIError]] = {
    "unauthorized": AuthenticationError,
    "invalid_api_key": AuthenticationError,
    "insufficient_scope": PermissionDeniedError,
    "not_found": NotFoundError,
    "payload_too_large": PayloadTooLargeError,
    "batch_too_large": PayloadTooLargeError,
    "rate_limited": RateLimitedError,
    "store_unavailable": ServiceUnavailableError,
    "internal_error": ServiceUnavailableError,
    "invalid_request": InvalidRequestError,
    "malformed_request": InvalidRequestError,
    "unsupported_media_type": InvalidRequestError,
    "request_timeout": InvalidRequestError,
}

#: The SDK class for each protocol code: e.g. ``API_PROTOCOL_CLASSES["replayed"]`` is a
#: subclass of both ProofMessengerAPIError and protocol.errors.Replayed.
API_PROTOCOL_CLASSES: dict[str, type[ProofMessengerAPIError]] = {
    code: type(
        f"{cls.__name__}APIError",
        (ProofMessengerAPIError, cls),
        {"__doc__": f"{cls.__doc__ or cls.title} (answered by the relay)", "__module__": __name__},
    )
    for code, cls in ERROR_CLASSES.items()
}


def api_error_class(code: str, status: int) -> type[ProofMessengerAPIError]:
    cls = API_PROTOCOL_CLASSES.get(code) or _HTTP_CLASSES.get(code)
    if cls is not None:
        return cls
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return NotFoundError
    if status == 413:
        return PayloadTooLargeError
    if status == 429:
        return RateLimitedError
    if status >= 500:
        return ServiceUnavailableError
    return ProofMessengerAPIError


def api_error(
    status: int,
    problem: dict[str, Any],
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> ProofMessengerAPIError:
    code = problem.get("code")
    code = code if isinstance(code, str) and code else f"http_{status}"
    detail = problem.get("detail")
    detail = detail if isinstance(detail, str) else f"HTTP {status}"
    cls = api_error_class(code, status)
    if issubclass(cls, RateLimitedError):
        return cls(status, code, detail, problem, request_id, retry_after=retry_after)
    return cls(status, code, detail, problem, request_id)
