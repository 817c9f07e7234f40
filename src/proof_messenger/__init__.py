"""Proof-Messenger: non-repudiable approval of exact transactions.

The public API of the protocol library is re-exported here; the relay, store,
SDK and CLI live in their own subpackages.
"""

from .protocol import *  # noqa: F403
from .protocol import __all__ as _protocol_all

__version__ = "0.1.0"

__all__ = ["__version__", *_protocol_all]
