"""In-process CPU cost of the relay's request path, without uvicorn or sockets.

    PYTHONPATH=src python bench/inproc.py [--requests 20000] [--concurrency 32]
                                          [--batch 0] [--profile out.prof]

Drives the real ASGI app (real SQLite store in a temp dir, shipped defaults except the
rate limit) with ``concurrency`` requests in flight, and prints the process CPU per
proof (all threads: event loop plus SQLite writer). It is a development tool: the
figures in docs/benchmarks.md come from ``bench/run.py``, which goes through HTTP. It is
much less sensitive to other load on the machine, so use it to compare two versions of
the code, and ``--profile`` (cProfile, event-loop thread only) to see where it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run

from proof_messenger.relay.app import create_app
from proof_messenger.relay.config import load_settings


def _scope(path: str, api_key: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {api_key}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }


async def _call(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def _lifespan(app: Any) -> tuple[asyncio.Task[None], asyncio.Queue[Any]]:
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    started = asyncio.get_running_loop().create_future()

    async def receive() -> Any:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup") and not started.done():
            started.set_result(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    msg = await started
    if msg["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"startup failed: {msg}")
    return task, inbox


async def main_async(opts: argparse.Namespace) -> int:
    proofs, _ = run.proofgen.load_or_generate(run.HERE / "results", run.AUDIENCE, 200_000, 200)
    with tempfile.TemporaryDirectory(prefix="pm-inproc-") as tmp:
        workdir = Path(tmp)
        cfg = run.write_config(
            workdir, f"sqlite:///{tmp}/audit.db", 1, run.free_port(), opts.access_log
        )
        api_key = run.cli(cfg, "apikey", "create", "--name", "b", "--scopes", "verify,keys:write")
        os.chdir(workdir)
        settings = load_settings(str(cfg))
        from proof_messenger.relay.logs import configure_logging

        # The relay's log lines go to fd 1 (as in production), here to /dev/null.
        saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        configure_logging(settings.log_level)
        app = create_app(settings)
        task, inbox = await _lifespan(app)
        for k in proofs.keys:
            scope = _scope("/keys", api_key)
            status, text = await _call(
                app, scope, json.dumps({"sub": k["sub"], "public_key": k["public_key"]}).encode()
            )
            assert status == 201, text
        bodies = [b.encode() for b in proofs.bodies[: opts.requests]]
        path = "/verify"
        if opts.batch:
            path = "/verify/batch"
            bodies = [
                json.dumps({"proofs": [json.loads(b) for b in bodies[i : i + opts.batch]]}).encode()
                for i in range(0, len(bodies), opts.batch)
            ]
        scope = _scope(path, api_key)
        warm, bodies = bodies[: len(bodies) // 10], bodies[len(bodies) // 10 :]

        async def drive(items: list[bytes]) -> int:
            it = iter(items)
            bad = 0

            async def worker() -> None:
                nonlocal bad
                for body in it:
                    status, text = await _call(app, scope, body)
                    good = b'"rejected":0' if opts.batch else b'"valid":true'
                    if status != 200 or good not in text:
                        bad += 1

            await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
            return bad

        await drive(warm)
        prof = cProfile.Profile() if opts.profile else None
        c0, t0, m0 = time.process_time(), time.perf_counter(), time.thread_time()
        if prof:
            prof.enable()
        bad = await drive(bodies)
        if prof:
            prof.disable()
        cpu, wall, main_cpu = (
            time.process_time() - c0,
            time.perf_counter() - t0,
            time.thread_time() - m0,
        )
        await inbox.put({"type": "lifespan.shutdown"})
        await task
        sys.stdout.flush()
        os.dup2(saved, 1)
        n = len(bodies) * (opts.batch or 1)
        print(
            f"{path}: {n} proofs, {len(bodies)} requests, bad={bad}, "
            f"{cpu / n * 1e6:.1f} µs CPU/proof ({main_cpu / n * 1e6:.1f} on the event loop), "
            f"{n / wall:,.0f} proofs/s wall (1 process)"
        )
        if prof:
            prof.dump_stats(opts.profile)
            print(f"profile: {opts.profile}")
        return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch", type=int, default=0, help="proofs per /verify/batch call")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--profile", default="", help="write a cProfile of the timed part here")
    opts = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(main_async(opts))


if __name__ == "__main__":
    sys.exit(main())
