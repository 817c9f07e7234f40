"""The asyncio client (``httpx.AsyncClient``); same API as the sync client, awaitable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx

from ..audit.checkpoint import NoteVerifier
from ._base import (
    NO_STREAM_STATUSES,
    ApprovalTimeoutError,
    Flow,
    Operations,
    ProofInput,
    PublicKeyInput,
    RetryPolicy,
    Send,
    T,
    audit_filters,
    sse_status,
)
from .models import (
    FINAL_APPROVAL_STATUSES,
    Approval,
    AuditEvent,
    BatchResult,
    KeyInfo,
    VerifyResult,
)
from .receipts import VerifiedReceipt, verify_receipt

__all__ = ["AsyncProofMessengerClient"]


class AsyncProofMessengerClient:
    """Async twin of :class:`~proof_messenger.client.ProofMessengerClient`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._ops = Operations(base_url, api_key, retry or RetryPolicy())
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncProofMessengerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        reply: Any = None
        try:
            while True:
                action = flow.send(reply)
                if isinstance(action, Send):
                    try:
                        reply = await self._http.send(action.request)
                    except httpx.HTTPError as exc:
                        reply = exc
                else:
                    await asyncio.sleep(action.seconds)
                    reply = None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def verify(
        self,
        proof: ProofInput,
        *,
        require_user_verification: bool = False,
        user_token: str | None = None,
    ) -> VerifyResult:
        """See :meth:`ProofMessengerClient.verify` (including the note on ``Replayed``)."""
        return await self._run(self._ops.verify(proof, require_user_verification, user_token))

    async def verify_batch(
        self, proofs: list[ProofInput], *, user_token: str | None = None
    ) -> BatchResult:
        return await self._run(self._ops.verify_batch(proofs, user_token))

    async def request_approval(
        self,
        sub: str,
        context: Mapping[str, Any],
        ttl_seconds: int = 300,
        require_user_verification: bool = False,
        *,
        user_token: str | None = None,
    ) -> Approval:
        return await self._run(
            self._ops.request_approval(
                sub, context, ttl_seconds, require_user_verification, user_token
            )
        )

    async def get_approval(self, approval_id: str) -> Approval:
        return await self._run(self._ops.get_approval(approval_id))

    async def wait_for_approval(
        self,
        approval_id: str,
        timeout: float = 300.0,  # noqa: ASYNC109 - same API as the sync client
        *,
        poll_interval: float = 1.0,
    ) -> Approval:
        deadline = time.monotonic() + timeout
        stream = True
        while True:
            approval = await self.get_approval(approval_id)
            if approval.is_final:
                return approval
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApprovalTimeoutError(approval)
            if stream:
                stream = await self._await_event(approval_id, remaining)
            else:
                await asyncio.sleep(min(poll_interval, remaining))

    async def _await_event(self, approval_id: str, remaining: float) -> bool:
        request = self._ops.approval_events_request(approval_id)
        request.extensions["timeout"] = httpx.Timeout(self.timeout, read=remaining).as_dict()
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError:
            await asyncio.sleep(min(1.0, remaining))
            return True
        try:
            if response.status_code in NO_STREAM_STATUSES:
                return False
            if response.status_code != 200:
                await response.aread()
                raise self._ops.error(response)
            async for line in response.aiter_lines():
                if sse_status(line) in FINAL_APPROVAL_STATUSES:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        return True

    async def register_key(
        self, sub: str, public_key: PublicKeyInput, *, label: str | None = None
    ) -> KeyInfo:
        return await self._run(self._ops.register_key(sub, public_key, label))

    async def revoke_key(self, kid: str, reason: str) -> KeyInfo:
        return await self._run(self._ops.revoke_key(kid, reason))

    async def get_key(self, kid: str) -> KeyInfo:
        return await self._run(self._ops.get_key(kid))

    async def list_keys(self, sub: str | None = None) -> list[KeyInfo]:
        return await self._run(self._ops.list_keys(sub))

    async def audit(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[AuditEvent]:
        clean = audit_filters(filters)
        cursor: str | None = None
        while True:
            events, cursor = await self._run(self._ops.audit_page(clean, cursor, page_size))
            for event in events:
                yield event
            if cursor is None:
                return

    async def get_audit_event(self, event_id: str) -> AuditEvent:
        return await self._run(self._ops.get_audit_event(event_id))

    async def audit_proof(
        self, event_id: str, log_key: NoteVerifier | Iterable[NoteVerifier]
    ) -> VerifiedReceipt:
        """See :meth:`ProofMessengerClient.audit_proof`."""
        receipt = await self._run(self._ops.audit_receipt(event_id))
        return verify_receipt(receipt, log_key)
