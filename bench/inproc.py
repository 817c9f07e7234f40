"""In-process CPU cost of the relay's request path, without uvicorn or sockets.

    PYTHONPATH=src python bench/inproc.py [--requests 20000] [--concurrency 32]
                                          [--batch 0] [--profile out.prof]

Drives the real ASGI app (real SQLite store in a temp dir, shipped defaults except the
rate limit) with ``concurrency`` requests in flight, and prints the process CPU per
proof (all threads: event loop plus SQLite writer). ``--postgres`` uses a fresh PostgreSQL
database instead (dropped afterwards) and also prints the CPU of that database's server
backends per proof, and the statements (round trips) and pool acquisitions per proof. It is a development tool: the
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import proofs as proofgen
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


class _PgCounters:
    """Statements sent and pool acquisitions made by asyncpg (a dev-tool monkeypatch)."""

    def __init__(self) -> None:
        self.statements = 0
        self.acquires = 0

    def install(self) -> None:
        import asyncpg.connection
        import asyncpg.pool

        con_cls, pool_cls = asyncpg.connection.Connection, asyncpg.pool.Pool
        execute, _execute, _executemany = con_cls.execute, con_cls._execute, con_cls._executemany
        acquire = pool_cls.acquire
        counters = self

        async def execute_(self: Any, query: str, *args: Any, **kw: Any) -> Any:
            if not args:  # with args it goes through _execute, counted there
                counters.statements += 1
            return await execute(self, query, *args, **kw)

        async def _execute_(self: Any, *args: Any, **kw: Any) -> Any:
            counters.statements += 1
            return await _execute(self, *args, **kw)

        async def _executemany_(self: Any, *args: Any, **kw: Any) -> Any:
            counters.statements += 1
            return await _executemany(self, *args, **kw)

        def acquire_(self: Any, *args: Any, **kw: Any) -> Any:
            counters.acquires += 1
            return acquire(self, *args, **kw)

        con_cls.execute = execute_
        con_cls._execute = _execute_
        con_cls._executemany = _executemany_
        pool_cls.acquire = acquire_


def _backend_cpu(dbname: str) -> float:
    """CPU seconds used so far by the server backends connected to ``dbname``."""
    pids = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-Atc",
            f"SELECT pid FROM pg_stat_activity WHERE datname = '{dbname}'",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def main_async(opts: argparse.Namespace) -> int:
    if not opts.postgres:
        return await _main_async(opts, None)
    cwd = os.getcwd()
    with run.postgres_database() as url:
        try:
            return await _main_async(opts, url)
        finally:
            os.chdir(cwd)  # out of the deleted temp dir before dropdb runs


async def _main_async(opts: argparse.Namespace, pg_url: str | None) -> int:
    proofs, _ = proofgen.load_or_generate(run.HERE / "results", run.AUDIENCE, 200_000, 200)
    counters = _PgCounters()
    if pg_url is not None:
        counters.install()
    with tempfile.TemporaryDirectory(prefix="pm-inproc-") as tmp:
        workdir = Path(tmp)
        db_url = pg_url or f"sqlite:///{tmp}/audit.db"
        cfg = run.write_config(workdir, db_url, 1, run.free_port(), opts.access_log)
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
        dbname = pg_url.rsplit("/", 1)[1] if pg_url else ""
        pg0 = _backend_cpu(dbname) if pg_url else 0.0
        s0, a0 = counters.statements, counters.acquires
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
        statements, acquires = counters.statements - s0, counters.acquires - a0
        pg_cpu = _backend_cpu(dbname) - pg0 if pg_url else 0.0
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
        if pg_url:
            print(
                f"postgres: {pg_cpu / n * 1e6:.1f} µs backend CPU/proof "
                f"({pg_cpu / wall:.2f} cores), {statements / n:.2f} statements/proof, "
                f"{acquires / n:.2f} pool acquisitions/proof"
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
    p.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database")
    opts = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(main_async(opts))


if __name__ == "__main__":
    sys.exit(main())
