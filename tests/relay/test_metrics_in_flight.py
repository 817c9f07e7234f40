"""The in-flight gauge as a scrape sees it (one process: counted, read when scraped)."""

from __future__ import annotations

import re

from proof_messenger.relay.metrics import metrics, render


def _in_flight() -> float:
    match = re.search(rb"^proof_messenger_http_in_flight_requests (\S+)$", render(), re.M)
    assert match is not None
    return float(match.group(1))


def test_scrape_shows_requests_started_and_not_finished() -> None:
    m = metrics()
    base = _in_flight()
    m.request_started()
    m.request_started()
    assert _in_flight() == base + 2
    m.request_finished()
    assert _in_flight() == base + 1
    m.request_finished()
    assert _in_flight() == base
