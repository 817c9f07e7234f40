"""ASGI entry point for uvicorn workers: ``proof_messenger.relay.asgi:app_factory``.

Worker processes rebuild their settings from the same file and environment the
``serve`` command validated (the file path travels in PROOF_MESSENGER_CONFIG).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from .app import create_app
from .config import load_settings
from .logs import configure_logging


def app_factory() -> Starlette:
    settings = load_settings(os.environ.get("PROOF_MESSENGER_CONFIG") or None)
    configure_logging(settings.log_level)
    return create_app(settings)
