"""Python SDK for the Proof-Messenger relay: ``ProofMessengerClient`` (blocking) and
``AsyncProofMessengerClient`` (asyncio), both on httpx.

Rejections raise the protocol's exception for their ``code`` (``except Replayed:``,
``except Expired:`` ...), which is also a :class:`ProofMessengerAPIError`.
"""

from ..protocol.errors import *  # noqa: F403 - so `from proof_messenger.client import Replayed` works
from ..protocol.errors import __all__ as _protocol_errors
from ._base import ApprovalTimeoutError, RetryPolicy
from .async_ import AsyncProofMessengerClient
from .errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProofMessengerAPIError,
    ProofMessengerClientError,
    RateLimitedError,
    ServiceUnavailableError,
    TransportError,
)
from .models import (
    Approval,
    AuditEvent,
    Authorization,
    BatchEntry,
    BatchResult,
    KeyInfo,
    VerifyResult,
)
from .receipts import ReceiptError, VerifiedReceipt, load_verifier
from .sync import ProofMessengerClient

__all__ = [
    "Approval",
    "ApprovalTimeoutError",
    "AsyncProofMessengerClient",
    "AuditEvent",
    "AuthenticationError",
    "Authorization",
    "BatchEntry",
    "BatchResult",
    "InvalidRequestError",
    "KeyInfo",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProofMessengerAPIError",
    "ProofMessengerClient",
    "ProofMessengerClientError",
    "RateLimitedError",
    "ReceiptError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "TransportError",
    "VerifiedReceipt",
    "VerifyResult",
    "load_verifier",
    *_protocol_errors,
]
