"""One real relay per module for the SDK tests (plus helpers to reach it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.webhooks.harness import Relay


@dataclass
class RelayUnderTest:
    relay: Relay
    key: str  # all scopes
    verify_only: str  # only the verify scope

    @property
    def url(self) -> str:
        return self.relay.url


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayUnderTest]:
    r = Relay(tmp_path_factory.mktemp("sdk-relay"), {"limits": {"max_body_bytes": 64 * 1024}})
    key = r.api_key()
    verify_only = r.api_key("verify", name="verifier")
    r.start()
    try:
        yield RelayUnderTest(r, key, verify_only)
    finally:
        r.stop()


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, counting what it sends (to prove what is not retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return await super().handle_async_request(request)
