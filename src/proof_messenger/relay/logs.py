"""Structured JSON logs (structlog), one line per event, for relay and uvicorn alike.

Log events carry identifiers (request id, proof id, kid, API key id), never secrets
or plaintext transaction contexts. Values are JSON-escaped, so a context string with
a newline cannot forge a log line.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any

import msgspec

__all__ = ["configure_logging", "import_structlog", "import_without"]


#: Optional packages structlog imports when installed, for features the relay does not use.
_HIDDEN_FROM_STRUCTLOG = ("rich", "greenlet")


def import_structlog() -> None:
    """Import structlog with ``rich`` and ``greenlet`` hidden, once per process, before any
    relay module does.

    ``import structlog`` always imports ``structlog.dev`` and ``structlog.tracebacks``,
    which import ``rich`` (a CLI dependency) when it is installed, and
    ``structlog.threadlocal``, which imports ``greenlet`` when some other package brought
    it in: about 7 MB of RSS and 60-130 ms of start-up in every worker, for the coloured
    console renderer, the locals pretty-printer and greenlet-local context, none of
    which the relay uses (it renders JSON, and ``format_exc_info`` formats tracebacks
    with the standard library). Called when ``proof_messenger.relay`` is first imported.
    """
    import_without("structlog", _HIDDEN_FROM_STRUCTLOG)


def import_without(module: str, hidden: tuple[str, ...]) -> None:
    """Import ``module`` (once per process) while the optional packages ``hidden`` cannot
    be imported, so that it falls back to its plain implementations instead of loading
    them.

    With ``sys.modules[name] = None`` those optional imports fail; the entries are restored
    at once, so anything imported later (the CLI's ``rich``, say) still imports them
    normally.
    """
    if module in sys.modules:
        return
    saved = {name: sys.modules[name] for name in hidden if name in sys.modules}
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        importlib.import_module(module)
    finally:
        for name in hidden:
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                del sys.modules[name]


import_structlog()

import structlog  # noqa: E402  (after import_structlog: structlog without rich)
from structlog.typing import EventDict  # noqa: E402

from .timefmt import utc_parts  # noqa: E402


def _fallback(value: Any) -> str:
    return repr(value)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def _utc_iso(now: float) -> str:
    """``TimeStamper(fmt="iso", utc=True)``'s format, e.g. ``2026-11-25T22:53:12.774195Z``."""
    prefix, us = utc_parts(now)
    return f"{prefix}.{us:06d}Z"


def _level_and_time(_: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """add_log_level + TimeStamper in one step (two log lines per /verify pay for each)."""
    event_dict["level"] = "warning" if method_name == "warn" else method_name
    event_dict["timestamp"] = _utc_iso(time.time())
    return event_dict


def _render(_: Any, __: str, event_dict: EventDict) -> bytes:
    if "exc_info" in event_dict or "exception" in event_dict:
        event_dict = structlog.processors.format_exc_info(_, __, event_dict)
    return _encoder.encode(event_dict)


def configure_logging(level: str = "info") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    # The same level and timestamp fields for relay and stdlib (uvicorn) records.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _level_and_time,
    ]
    structlog.configure(
        processors=[*shared, _render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Bytes straight to the buffer (one write + flush per line, as before).
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
