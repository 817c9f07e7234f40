"""The one error type for invalid settings, shared by every part that reads them.

It sits outside ``relay`` so that packages whose settings the relay carries (webhooks)
can report a bad setting without importing the relay: arrows stay one-way.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An invalid setting; the message names it."""
