"""The relay benchmark: one command, every figure of docs/benchmarks.md.

    PYTHONPATH=src python bench/run.py            # full run (~5 minutes)
    PYTHONPATH=src python bench/run.py --smoke    # a few hundred proofs, ~20 s (CI)

It starts the relay as a user would (``proof-messenger apikey create`` then
``proof-messenger serve`` with a YAML config, SQLite then PostgreSQL, 1 then 2 workers),
registers keys through POST /keys, feeds pre-generated distinct proofs to wrk (a Lua
script checks that every answer is a 200 with ``valid: true``), and measures throughput,
latency percentiles, server CPU per request, worker RSS and start-up time. In the same run
it measures the ceiling (a bare ASGI app that only verifies the signature) and the raw
two-core ECDSA limit, and reports our ratio to each.

Benchmark-only settings (printed with the report): the per-API-key rate limit is raised
to 1,000,000/s (the default 100/s would answer 429), and proofs are signed with a one-day
lifetime (``verification.max_lifetime_seconds: 86400``) so the cached proof set stays
valid between runs. Everything else is the relay's default, access log included.
Only 127.0.0.1 is ever contacted; every load run is bounded in time and in proofs.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The relay source the servers run (``--src``; bench/ab.py points it at another revision).
SRC = REPO / "src"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

import proofs as proofgen  # noqa: E402

AUDIENCE = "bench.example"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- small helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET ``path`` on the loopback ``port``: (status, body)."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        con.request("GET", path)
        resp = con.getresponse()
        return resp.status, resp.read()
    finally:
        con.close()


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out.append(int(child))
                    out.extend(descendants(int(child)))
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK  # minus idle and iowait


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE)])
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float
    workdir: Path

    def all_pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        # uvicorn's supervisor spawns its workers (spawn_main in their command line, beside
        # multiprocessing's helpers); gunicorn (serve with workers > 1) forks them: its
        # children are the workers.
        kids = [p for p in descendants(self.proc.pid) if "spawn_main" in cmdline(p)]
        if not kids and "serve" in cmdline(self.proc.pid):
            kids = descendants(self.proc.pid)
        return kids or [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, started: float) -> float:
    deadline = started + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            if http_get(port, path, timeout=0.5)[0] == 200:
                return time.monotonic() - started
        time.sleep(0.005)
    raise RuntimeError("server not ready within 60 s")


def write_config(workdir: Path, db_url: str, workers: int, port: int, access_log: bool) -> Path:
    cfg = workdir / "relay.yaml"
    cfg.write_text(
        f"""# benchmark configuration (see bench/run.py for why each non-default is set)
bind_address: "127.0.0.1:{port}"
workers: {workers}
audience: {AUDIENCE}
access_log: {"true" if access_log else "false"}
master_key_file: {workdir / "master.key"}
log_key_file: {workdir / "log-signing.key"}
database:
  url: "{db_url}"
verification:
  max_lifetime_seconds: {proofgen.LIFETIME}
limits:
  rate_limit_per_second: 1000000
  rate_limit_burst: 1000000
  max_batch: 100
"""
    )
    return cfg


def cli(cfg: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "proof_messenger.cli", *args, "--config", str(cfg)],
        env=python_env(),
        cwd=cfg.parent,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.stdout.decode().strip()


def start_relay(
    workdir: Path, db_url: str, workers: int, *, access_log: bool = True
) -> tuple[Server, str]:
    port = free_port()
    cfg = write_config(workdir, db_url, workers, port, access_log)
    api_key = cli(cfg, "apikey", "create", "--name", "bench", "--scopes", "verify,keys:write")
    log = open(workdir / "relay.log", "wb")  # noqa: SIM115 - lives as long as the server
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proof_messenger.cli", "serve", "--config", str(cfg)],
        env=python_env(),
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        startup = wait_ready(proc, port, "/ready", started)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Server(proc, port, startup, workdir), api_key


def start_bare(workdir: Path, keys_file: Path, workers: int) -> Server:
    # The relay's HTTP protocol (one write per response), so the ceiling is measured under
    # the same server as the relay: `serve` hands uvicorn this same setting.
    from proof_messenger.relay.server_protocol import http_protocol

    port = free_port()
    env = python_env()
    env["BENCH_KEYS_FILE"] = str(keys_file)
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
            "--no-server-header",
            "--http",
            http_protocol(),
        ],
        env=env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    startup = wait_ready(proc, port, "/health", started)
    return Server(proc, port, startup, workdir)


def register_keys(port: int, api_key: str, keys: list[dict[str, str]]) -> None:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    try:
        for k in keys:
            body = json.dumps({"sub": k["sub"], "public_key": k["public_key"]})
            con.request("POST", "/keys", body=body, headers=headers)
            resp = con.getresponse()
            text = resp.read()
            if resp.status != 201:
                raise RuntimeError(f"POST /keys answered {resp.status}: {text[:300]!r}")
    finally:
        con.close()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    name = f"pm_bench_{int(time.time())}_{os.getpid()}"
    base = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(["createdb", *base, name], check=True, timeout=30)
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(["dropdb", *base, "--if-exists", "--force", name], timeout=60, check=False)


_COMMIT_SERIES = (
    "proof_messenger_audit_commit_rows_sum",
    "proof_messenger_audit_commit_rows_count",
    "proof_messenger_audit_commit_wait_seconds_sum",
    "proof_messenger_audit_commit_duration_seconds_sum",
)


def commit_sums(port: int) -> dict[str, float]:
    """The relay's group-commit totals from ``/metrics`` (all workers summed)."""
    _, body = http_get(port, "/metrics", timeout=5)
    found = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in _COMMIT_SERIES:
            found[name] = float(value)
    return found


@dataclass
class Commits:
    """The group commit during one load, from the relay's own metrics (docs/deployment.md,
    "The audit write lock")."""

    per_s: float
    rows_per_commit: float
    #: Seconds per second that some worker held the write turn. On SQLite the workers
    #: share one write lock, so this is the share of time it was busy (at most 1).
    busy: float
    wait_ms: float  # mean wait for the write turn
    duration_ms: float  # mean time holding it
    #: Time holding the turn per row: with the lock busy, what bounds the throughput.
    hold_us_per_row: float


def commits_between(before: dict[str, float], after: dict[str, float], seconds: float) -> Commits:
    def delta(suffix: str) -> float:
        name = next(n for n in _COMMIT_SERIES if n.endswith(suffix))
        return after.get(name, 0.0) - before.get(name, 0.0)

    count, rows = delta("rows_count"), delta("rows_sum")
    held = delta("duration_seconds_sum")
    return Commits(
        per_s=round(count / seconds, 1),
        rows_per_commit=round(rows / count, 1) if count else 0.0,
        busy=round(held / seconds, 3),
        wait_ms=round(delta("wait_seconds_sum") * 1000 / count, 3) if count else 0.0,
        duration_ms=round(held * 1000 / count, 3) if count else 0.0,
        hold_us_per_row=round(held * 1e6 / rows, 2) if rows else 0.0,
    )


# --- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    requests_per_s: float
    proofs_per_s: float
    good: int
    bad: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    cpu_us_per_request: float | None
    duration_s: float
    connections: int
    exhausted: bool
    errors: dict[str, int] = field(default_factory=dict)
    first_bad: str = ""
    #: 1-minute load average after the run: above the core count, other processes
    #: shared the CPU with the relay and wrk and the figures are pessimistic.
    loadavg_after: float = 0.0
    #: Where the machine's CPU went during the run, in cores (from /proc/stat and
    #: rusage): the relay (or bare app), wrk, and everything else on the machine.
    server_cores: float = 0.0
    wrk_cores: float = 0.0
    other_cores: float = 0.0
    #: The relay's group commit during the run (None for the bare ceiling).
    commits: Commits | None = None


def wrk(
    server: Server,
    path: str,
    bodies: list[str],
    *,
    workdir: Path,
    api_key: str | None,
    duration: float,
    connections: int,
    threads: int = 2,
    mode: str = "verify",
    delay_ms: int = 0,
    batch_size: int = 1,
    cycle: bool = False,
) -> Load:
    threads = max(1, min(threads, connections))
    prefix = workdir / f"bodies-{time.monotonic_ns()}"
    for t in range(threads):
        Path(f"{prefix}.{t}").write_text("\n".join(bodies[t::threads]) + "\n")
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "wrk" / "proofs.lua"),
    ]
    if api_key:
        cmd += ["-H", f"Authorization: Bearer {api_key}"]
    cmd += [
        f"http://127.0.0.1:{server.port}{path}",
        "--",
        str(prefix),
        mode,
        str(delay_ms),
        str(batch_size),
        "1" if cycle else "0",
    ]
    pids = server.all_pids()
    sums0 = commit_sums(server.port) if api_key else None
    cpu0, busy0, kids0 = cpu_seconds(pids), busy_seconds(), children_cpu()
    out = subprocess.run(cmd, capture_output=True, timeout=duration + 60, check=True)
    cpu1, busy1, kids1 = cpu_seconds(pids), busy_seconds(), children_cpu()
    sums1 = commit_sums(server.port) if api_key else None
    for t in range(threads):
        Path(f"{prefix}.{t}").unlink()
    line = next((ln for ln in out.stdout.decode().splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout.decode()} {out.stderr.decode()}")
    doc = json.loads(line.removeprefix("WRK_JSON "))
    seconds = doc["duration_us"] / 1e6
    server_cores = (cpu1 - cpu0) / seconds
    wrk_cores = (kids1 - kids0) / seconds
    busy_cores = (busy1 - busy0) / seconds
    lat = doc["latency_us"]
    good = doc["good"]
    return Load(
        requests_per_s=round(good / seconds, 1),
        proofs_per_s=round(good * batch_size / seconds, 1),
        good=good,
        bad=doc["bad"],
        p50_ms=lat["p50"] / 1000,
        p95_ms=lat["p95"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        cpu_us_per_request=round((cpu1 - cpu0) * 1e6 / good, 1) if good else None,
        duration_s=round(seconds, 2),
        connections=connections,
        exhausted=bool(doc["exhausted"]),
        errors={k: v for k, v in doc["errors"].items() if v},
        first_bad=doc["first_bad"],
        loadavg_after=round(os.getloadavg()[0], 2),
        server_cores=round(server_cores, 2),
        wrk_cores=round(wrk_cores, 2),
        other_cores=round(max(0.0, busy_cores - server_cores - wrk_cores), 2),
        commits=(
            commits_between(sums0, sums1, seconds)
            if sums0 is not None and sums1 is not None
            else None
        ),
    )


# --- raw crypto ------------------------------------------------------------------------------


def _crypto_worker(args: tuple[list[str], list[dict[str, str]], float]) -> int:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    bodies, keys, seconds = args

    def b64u(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    def ec_key(der: bytes) -> ec.EllipticCurvePublicKey:
        key = load_der_public_key(der)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    by_der = {k["public_key"]: ec_key(b64u(k["public_key"])) for k in keys}
    items = []
    for body in bodies:
        env = json.loads(body)
        sig = b64u(env["sig"])
        der_sig = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
        items.append(
            (by_der[env["public_key"]], der_sig, b"proof-messenger/v1\x00" + b64u(env["intent"]))
        )
    algo = ec.ECDSA(hashes.SHA256())
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for key, sig, data in items:
            key.verify(sig, data, algo)
        n += len(items)
    return n


def raw_crypto(proofs: proofgen.ProofSet, seconds: float) -> dict[str, float]:
    """ECDSA P-256 verifies per second with parsed keys: 1 process, then one per core."""
    sample = proofs.bodies[:200]
    ctx = multiprocessing.get_context("spawn")
    result: dict[str, float] = {}
    cores = os.cpu_count() or 1
    for procs in sorted({1, cores}):
        with ctx.Pool(procs) as pool:
            counts = pool.map(_crypto_worker, [(sample, proofs.keys, seconds)] * procs)
        result[f"verify_per_s_{procs}proc"] = round(sum(counts) / seconds, 1)
    return result


# --- scenarios -------------------------------------------------------------------------------


@dataclass
class RelayRun:
    name: str
    store: str
    workers: int
    access_log: bool
    startup_s: float
    rss_mb_per_worker: list[float]
    closed: Load | None = None
    paced: Load | None = None
    #: When --rate is beyond what this machine sustains, a second steady run at half
    #: the closed-loop throughput shows the latency of a relay that is not saturated.
    paced_half: Load | None = None
    batch: Load | None = None


class Cursor:
    """Hands out disjoint slices of the proof set within one database's lifetime."""

    def __init__(self, bodies: list[str]) -> None:
        self.bodies = bodies
        self.at = 0

    def take(self, n: int) -> list[str]:
        n = min(n, len(self.bodies) - self.at)
        out = self.bodies[self.at : self.at + n]
        self.at += n
        return out

    def rest(self) -> list[str]:
        return self.take(len(self.bodies) - self.at)


def batches(bodies: list[str], size: int) -> list[str]:
    out = []
    for i in range(0, len(bodies) - size + 1, size):
        out.append('{"proofs":[' + ",".join(bodies[i : i + size]) + "]}")
    return out


def run_relay(
    name: str,
    store: str,
    workers: int,
    db_url: str,
    proofs: proofgen.ProofSet,
    opts: argparse.Namespace,
    *,
    access_log: bool = True,
    paced: bool = False,
    batch: bool = False,
) -> RelayRun:
    with tempfile.TemporaryDirectory(prefix="pm-bench-") as tmp:
        workdir = Path(tmp)
        server, api_key = start_relay(workdir, db_url, workers, access_log=access_log)
        try:
            register_keys(server.port, api_key, proofs.keys)
            cur = Cursor(proofs.bodies)
            common: dict[str, Any] = {"workdir": workdir, "api_key": api_key}
            # warm-up: first requests pay for lazy imports, connections, caches
            wrk(server, "/verify", cur.take(opts.warmup), duration=1, connections=8, **common)
            run = RelayRun(name, store, workers, access_log, round(server.startup_s, 3), [])
            need = opts.smoke_closed or int(opts.duration * opts.max_rate)
            run.closed = wrk(
                server,
                "/verify",
                cur.take(need),
                duration=opts.duration,
                connections=opts.connections,
                **common,
            )
            if paced:
                run.paced = paced_run(server, cur, opts, common, opts.rate)
                capacity = run.closed.requests_per_s
                if capacity < opts.rate * 1.2:
                    run.paced_half = paced_run(server, cur, opts, common, int(capacity / 2))
            if batch:
                size = opts.batch_size
                run.batch = wrk(
                    server,
                    "/verify/batch",
                    batches(cur.rest(), size),
                    duration=opts.batch_duration,
                    connections=opts.batch_connections,
                    mode="batch",
                    batch_size=size,
                    **common,
                )
            run.rss_mb_per_worker = [round(rss_mb(p), 1) for p in server.worker_pids()]
            return run
        finally:
            server.stop()


def paced_run(
    server: Server, cur: Cursor, opts: argparse.Namespace, common: dict[str, Any], rate: int
) -> Load:
    """A steady load at ``rate``: wrk with a per-connection delay, calibrated once.

    wrk's ``delay()`` paces each connection (wrk2 is not in Debian); latency is measured
    from send to answer, so a saturated relay shows up as a lower achieved rate.
    """
    conns = opts.paced_connections
    delay = max(0, round(conns / rate * 1000))
    probe = wrk(
        server,
        "/verify",
        cur.take(rate * 3),
        duration=2,
        connections=conns,
        delay_ms=delay,
        **common,
    )
    # rate = conns / (delay + service time): solve for the delay that gives ``rate``
    service_ms = conns / max(probe.requests_per_s, 1) * 1000 - delay
    delay = max(0, round(conns / rate * 1000 - service_ms))
    return wrk(
        server,
        "/verify",
        cur.take(int(rate * (opts.duration + 5))),
        duration=opts.duration,
        connections=conns,
        delay_ms=delay,
        **common,
    )


def run_bare(proofs: proofgen.ProofSet, workers: int, opts: argparse.Namespace) -> RelayRun:
    with tempfile.TemporaryDirectory(prefix="pm-bench-bare-") as tmp:
        workdir = Path(tmp)
        keys_file = workdir / "keys.json"
        keys_file.write_text(json.dumps([{"public_key": k["public_key"]} for k in proofs.keys]))
        server = start_bare(workdir, keys_file, workers)
        try:
            common: dict[str, Any] = {"workdir": workdir, "api_key": None}
            wrk(
                server, "/verify", proofs.bodies[: opts.warmup], duration=1, connections=8, **common
            )
            run = RelayRun(
                f"bare ASGI, {workers}w", "none", workers, False, round(server.startup_s, 3), []
            )
            # The bare app has no replay protection, so its proofs may be sent again: a
            # fixed budget of distinct proofs capped its rate on a fast machine (wrk
            # stopped, "exhausted", and the ceiling read about a third too low).
            run.closed = wrk(
                server,
                "/verify",
                proofs.bodies,
                duration=opts.duration,
                connections=opts.connections,
                cycle=True,
                **common,
            )
            run.rss_mb_per_worker = [round(rss_mb(p), 1) for p in server.worker_pids()]
            return run
        finally:
            server.stop()


# --- report ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    versions = {}
    for mod in ("cryptography", "cbor2", "starlette", "uvicorn", "msgspec", "asyncpg", "structlog"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, check=False).stdout.decode()
    sqlite_version = __import__("sqlite3").sqlite_version
    pg = (
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-tAc",
                "SHOW server_version",
                "postgres",
            ],
            capture_output=True,
            check=False,
        )
        .stdout.decode()
        .strip()
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": round(mem_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite_version,
        "postgresql": pg,
        "wrk": wrk_version.split("\n")[0][:60],
        "libraries": versions,
    }


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def phases(run: RelayRun) -> list[tuple[str, Load | None]]:
    """A run's loads with their table labels, in the order they ran."""
    return [
        ("", run.closed),
        (" — steady", run.paced),
        (" — steady", run.paced_half),
        (" — /verify/batch", run.batch),
    ]


def table(runs: list[RelayRun]) -> str:
    rows = [
        "| configuration | proofs/s | p50 ms | p95 ms | p99 ms | CPU µs/req | RSS MB/worker | start-up s | all 200/valid | cores: server / wrk / others |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in runs:
        for label, load in phases(r):
            if load is None:
                continue
            if label == " — steady":
                label = f" — steady {load.requests_per_s:,.0f}/s"
            # A wrk thread that ran out of proofs stopped early: the rate is understated.
            rate = fmt(load.proofs_per_s, 0) + (" (ran out of proofs)" if load.exhausted else "")
            rows.append(
                f"| {r.name}{label} ({load.connections} conns) | {rate} | "
                f"{fmt(load.p50_ms, 2)} | {fmt(load.p95_ms, 2)} | {fmt(load.p99_ms, 2)} | "
                f"{fmt(load.cpu_us_per_request, 0)} | "
                f"{'/'.join(fmt(x, 0) for x in r.rss_mb_per_worker)} | {r.startup_s:.2f} | "
                f"{'yes' if load.bad == 0 and not load.errors else 'NO'} ({load.good:,}) | "
                f"{load.server_cores:.2f} / {load.wrk_cores:.2f} / {load.other_cores:.2f} |"
            )
    return "\n".join(rows)


def commit_table(runs: list[RelayRun]) -> str:
    """The group commit of every relay load: how full each commit was, and how busy the
    write turn (on SQLite: the one write lock all workers share)."""
    rows = [
        "| configuration | commits/s | rows per commit | write turn busy | mean wait ms | mean hold ms | hold µs per row |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        for label, load in phases(r):
            c = load.commits if load is not None else None
            if c is None:
                continue
            rows.append(
                f"| {r.name}{label} | {fmt(c.per_s, 0)} | {fmt(c.rows_per_commit)} | "
                f"{c.busy:.2f} | {fmt(c.wait_ms, 2)} | {fmt(c.duration_ms, 2)} | "
                f"{fmt(c.hold_us_per_row)} |"
            )
    return "\n".join(rows)


def main() -> int:
    global SRC
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="a few hundred proofs, SQLite, 1 worker")
    p.add_argument("--proofs", type=int, default=200_000, help="proofs to pre-generate")
    p.add_argument("--keys", type=int, default=200, help="distinct signing keys / subjects")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per closed-loop run")
    p.add_argument("--batch-duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--batch-connections", type=int, default=4)
    p.add_argument("--paced-connections", type=int, default=32)
    p.add_argument("--rate", type=int, default=1500, help="steady-load requests/s")
    p.add_argument("--max-rate", type=float, default=9000, help="proofs/s budgeted per run")
    p.add_argument("--batch-size", type=int, default=100, help="proofs per /verify/batch call")
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument(
        "--only", default="", help="comma list: sqlite1,sqlite2,sqlite2-nolog,pg1,pg2,bare"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument(
        "--src",
        type=Path,
        default=SRC,
        help="the relay source the servers run (default: this checkout's src)",
    )
    opts = p.parse_args()
    SRC = opts.src.resolve()
    if not (SRC / "proof_messenger" / "__init__.py").is_file():
        print(f"--src {opts.src}: no proof_messenger package there", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if opts.smoke:
        opts.proofs, opts.keys, opts.duration, opts.batch_duration = 400, 10, 2.0, 1.0
        opts.connections, opts.batch_connections, opts.warmup = 4, 1, 20
        opts.batch_size = 20
    opts.smoke_closed = 200 if opts.smoke else 0
    wanted = set(filter(None, opts.only.split(",")))

    def want(name: str) -> bool:
        return not wanted or name in wanted

    # An installed relay (wheel, Docker image) ships compiled bytecode; a checkout run
    # with PYTHONDONTWRITEBYTECODE would compile every module in every worker at start.
    compileall.compile_dir(SRC, quiet=1)
    results_dir = HERE / "results"
    t0 = time.monotonic()
    proofs, cached = proofgen.load_or_generate(results_dir, AUDIENCE, opts.proofs, opts.keys)
    print(
        f"proofs: {len(proofs.bodies):,} with {len(proofs.keys)} keys "
        f"({'cached' if cached else 'generated'} in {time.monotonic() - t0:.1f} s)",
        flush=True,
    )
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "src": str(SRC),
        "smoke": opts.smoke,
    }
    report["raw_crypto"] = raw_crypto(proofs, 0.3 if opts.smoke else 3.0)
    print(f"raw crypto: {report['raw_crypto']}", flush=True)

    runs: list[RelayRun] = []

    def record(run: RelayRun) -> None:
        runs.append(run)
        print(json.dumps(asdict(run)), flush=True)

    cores = os.cpu_count() or 1
    if opts.smoke:
        with tempfile.TemporaryDirectory(prefix="pm-bench-db-") as d:
            record(
                run_relay(
                    "SQLite, 1w", "sqlite", 1, f"sqlite:///{d}/audit.db", proofs, opts, batch=True
                )
            )
        record(run_bare(proofs, 1, opts))
    else:
        if want("bare"):
            record(run_bare(proofs, cores, opts))
        for workers in (1, cores):
            if want(f"sqlite{workers}"):
                with tempfile.TemporaryDirectory(prefix="pm-bench-db-") as d:
                    record(
                        run_relay(
                            f"SQLite, {workers}w",
                            "sqlite",
                            workers,
                            f"sqlite:///{d}/audit.db",
                            proofs,
                            opts,
                            paced=workers == cores,
                            batch=workers == cores,
                        )
                    )
        if want(f"sqlite{cores}-nolog"):
            with tempfile.TemporaryDirectory(prefix="pm-bench-db-") as d:
                record(
                    run_relay(
                        f"SQLite, {cores}w, access log off",
                        "sqlite",
                        cores,
                        f"sqlite:///{d}/audit.db",
                        proofs,
                        opts,
                        access_log=False,
                    )
                )
        if not opts.no_postgres:
            for workers in (1, cores):
                if want(f"pg{workers}"):
                    with postgres_database() as url:
                        record(
                            run_relay(
                                f"PostgreSQL, {workers}w", "postgres", workers, url, proofs, opts
                            )
                        )

    report["runs"] = [asdict(r) for r in runs]
    crypto_all = report["raw_crypto"][f"verify_per_s_{cores}proc"]
    ratios: dict[str, float] = {}
    bare = next((r for r in runs if r.store == "none" and r.workers == cores), None)
    ours = next(
        (r for r in runs if r.store == "sqlite" and r.workers == cores and r.access_log), None
    )
    if opts.smoke:
        bare = next((r for r in runs if r.store == "none"), None)
        ours = next((r for r in runs if r.store == "sqlite"), None)
    if bare and ours and bare.closed and ours.closed:
        ratios["verify_vs_bare_asgi"] = round(
            ours.closed.proofs_per_s / bare.closed.proofs_per_s, 3
        )
    if ours and ours.batch:
        ratios["batch_vs_raw_crypto"] = round(ours.batch.proofs_per_s / crypto_all, 3)
    report["ratios"] = ratios
    all_good = all(
        load.bad == 0 and not load.errors and load.good > 0
        for r in runs
        for load in (r.closed, r.paced, r.paced_half, r.batch)
        if load is not None
    )
    report["all_valid"] = all_good
    print()
    print(table(runs))
    print()
    print(commit_table(runs))
    print()
    print(f"raw ECDSA P-256 verify: {report['raw_crypto']}")
    print(f"ratios: {ratios}")
    print(f"every answer 200 with valid: true: {all_good}")
    out = (
        opts.json
        or results_dir
        / f"report-{time.strftime('%Y%m%dT%H%M%S')}{'-smoke' if opts.smoke else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")
    return 0 if all_good else 1


if __name__ == "__main__":
    sys.exit(main())
