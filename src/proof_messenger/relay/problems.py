"""RFC 9457 problem details with the protocol's stable ``code``."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from ..protocol.errors import ProofMessengerError

__all__ = ["HTTPProblem", "json_response", "problem_response"]

PROBLEM_TYPE_BASE = "https://proof-messenger.dev/problems/"
_encoder = msgspec.json.Encoder()


class HTTPProblem(Exception):
    """An error of the HTTP layer (auth, limits, routing) rather than of a proof."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail or title
        self.headers = headers or {}
        self.extra = extra


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


def problem_body(
    status: int, code: str, title: str, detail: str, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(
    exc: ProofMessengerError | HTTPProblem,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    merged = {**getattr(exc, "extra", {}), **extra}
    body = problem_body(exc.status, exc.code, exc.title, exc.detail, instance, **merged)
    all_headers = {**getattr(exc, "headers", {}), **(headers or {})}
    return Response(
        _encoder.encode(body), exc.status, all_headers, media_type="application/problem+json"
    )
