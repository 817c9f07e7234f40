"""A real relay (subprocess, SQLite file) and Chromium with a CDP virtual authenticator.

The relay's audience is ``localhost`` and its only allowed WebAuthn origin is
``http://localhost:<port>`` (a secure context for WebAuthn), so the pages are opened there.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from proof_messenger.relay import apikeys
from proof_messenger.store.base import ApiKeyRecord
from proof_messenger.store.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCOPES = ("approvals", "keys:write", "audit:read", "verify")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Relay:
    url: str  # http://localhost:<port>, the origin pages are opened on
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
        )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


async def _seed_api_key(db_path: Path) -> str:
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        await store.migrate()
        key_id, full = apikeys.generate_api_key()
        await store.insert_api_key(
            ApiKeyRecord(
                id=key_id,
                name="Payments backend",
                secret_hash=apikeys.hash_api_key(full),
                scopes=SCOPES,
                created_at=time.time(),
            )
        )
        return full
    finally:
        await store.close()


def start_relay(workdir: Path) -> Relay:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db = workdir / "relay.db"
    config = workdir / "relay.yaml"
    config.write_text(
        "\n".join(
            [
                f"bind_address: 127.0.0.1:{port}",
                "audience: localhost",
                f"public_url: http://localhost:{port}",
                f"master_key_file: {workdir / 'master.key'}",
                "access_log: false",
                "database:",
                f"  url: sqlite:///{db}",
                "webauthn:",
                f'  origins: ["http://localhost:{port}"]',
                "  rp_name: Example Bank",
                "",
            ]
        )
    )
    # A thread: Playwright's sync API may already run an event loop in this one.
    seeded: list[str] = []
    seeder = threading.Thread(target=lambda: seeded.append(asyncio.run(_seed_api_key(db))))
    seeder.start()
    seeder.join()
    api_key = seeded[0]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "PROOF_MESSENGER_CONFIG": str(config),
        "PROOF_MESSENGER_AUDIENCE": "localhost",
    }
    log_path = workdir / "relay.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "proof_messenger.cli", "serve"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    relay = Relay(f"http://localhost:{port}", api_key, process, log_path)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"relay exited early:\n{relay.log_tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return relay
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"relay did not become ready:\n{relay.log_tail()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = start_relay(tmp_path_factory.mktemp("relay"))
    try:
        yield r
    finally:
        r.process.terminate()
        try:
            r.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running on this thread,
    which breaks pytest-asyncio tests that run after it while it is alive."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed; these tests need a real Chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class PasskeyBrowser:
    context: Any
    page: Any
    cdp: Any
    authenticator_id: str


def add_virtual_authenticator(cdp: Any) -> str:
    cdp.send("WebAuthn.enable", {"enableUI": False})
    result = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return str(result["authenticatorId"])


@pytest.fixture(scope="module")
def passkey_browser(browser: Any) -> Iterator[PasskeyBrowser]:
    """One page with one virtual authenticator, shared by a module's tests (one user)."""
    context = browser.new_context(viewport={"width": 760, "height": 900})
    page = context.new_page()
    page.goto("about:blank")
    cdp = context.new_cdp_session(page)
    authenticator_id = add_virtual_authenticator(cdp)
    try:
        yield PasskeyBrowser(context, page, cdp, authenticator_id)
    finally:
        context.close()
