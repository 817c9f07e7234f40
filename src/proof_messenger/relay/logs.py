"""Structured JSON logs (structlog), one line per event, for relay and uvicorn alike.

Log events carry identifiers (request id, proof id, kid, API key id), never secrets
or plaintext transaction contexts. Values are JSON-escaped, so a context string with
a newline cannot forge a log line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec
import structlog
from structlog.typing import EventDict

__all__ = ["configure_logging"]


def _fallback(value: Any) -> str:
    return repr(value)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def _to_json(event: Any, **_: Any) -> bytes:
    """msgspec instead of json.dumps: a third of the cost of each log line on /verify."""
    return _encoder.encode(event)


_second = -1
_prefix = ""


def _utc_iso(now: float) -> str:
    """``TimeStamper(fmt="iso", utc=True)``'s format, e.g. ``2026-11-25T22:53:12.774195Z``,
    with the date part formatted once per second instead of through datetime per line."""
    global _second, _prefix
    sec, us = divmod(round(now * 1_000_000), 1_000_000)
    if sec != _second:
        _prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second = sec
    return f"{_prefix}.{us:06d}Z"


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
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _level_and_time, _render],
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
