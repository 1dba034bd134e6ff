"""What a scenario runs against: a throwaway PostgreSQL database, a private Redis, and
Blueline servers in their own processes, with their CPU time and memory read from /proc."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from blueline.persistence.migrate import upgrade

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit(wanted: int = 65_536) -> int:
    """Raise this process's open-file limit as far as allowed; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def keyring_spec() -> str:
    return f"bench:{base64.b64encode(secrets.token_bytes(32)).decode()}"


# ----------------------------------------------------------------------- /proc readings


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as handle:
        # The command name may contain spaces; fields after it are space-separated.
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def postgres_cpu() -> dict[int, float]:
    """CPU time of each PostgreSQL process on this machine, by pid: the backends of
    every client, the checkpointer, the WAL writer. The database has no process of its
    own per client here, so this is what the whole load costs it."""
    found: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as handle:
                if handle.read().strip() != "postgres":
                    continue
            found[int(entry.name)] = cpu_seconds(int(entry.name))
        except OSError:  # ended while being read
            continue
    return found


@dataclass
class CpuMeter:
    """CPU use of some processes over a wall-clock window, as a share of one core; with
    ``database``, also every PostgreSQL process's (a process that ends in the window
    loses its share of it, one that starts counts from zero)."""

    pids: Mapping[str, int]
    database: bool = False
    _cpu: dict[str, float] = field(default_factory=dict)
    _postgres: dict[int, float] = field(default_factory=dict)
    _wall: float = 0.0

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = {name: self._read(pid) for name, pid in self.pids.items()}
        self._postgres = postgres_cpu() if self.database else {}

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        used = {name: self._read(pid) - self._cpu[name] for name, pid in self.pids.items()}
        if self.database:
            used["database"] = sum(
                seconds - self._postgres.get(pid, 0.0) for pid, seconds in postgres_cpu().items()
            )
        return {
            name: round(seconds / wall, 3) if wall > 0 else 0.0 for name, seconds in used.items()
        }

    @staticmethod
    def _read(pid: int) -> float:
        if pid == os.getpid():
            return time.process_time()
        return cpu_seconds(pid)


# ----------------------------------------------------------------------- PostgreSQL


def _dsn_for(name: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@dataclass(frozen=True)
class BenchDatabase:
    name: str
    dsn: str  # asyncpg

    @property
    def url(self) -> str:  # SQLAlchemy
        return sqlalchemy_url(self.dsn)


@asynccontextmanager
async def throwaway_database() -> AsyncIterator[BenchDatabase]:
    """A new database ``blueline_bench_<random>``, migrated by Alembic, dropped at the end."""
    name = f"blueline_bench_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    database = BenchDatabase(name, _dsn_for(name))
    try:
        await asyncio.to_thread(upgrade, database.url)
        yield database
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------- Redis


class PrivateRedis:
    """A redis-server of our own on a free port, so other runs' traffic stays out."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (or pass --redis-url)")
        self._binary = binary
        self._dir = tempfile.mkdtemp(prefix="blueline-bench-redis-")
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def redis_for_run(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    server = PrivateRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


# ----------------------------------------------------------------------- servers


# All load comes from one address and one API key: the limiters stay in the path, but
# at these rates no bucket runs out. Scenarios may override them.
UNREACHABLE_RATE_LIMITS = {
    "BLUELINE_WEBHOOK_RATE_PER_CLIENT_PER_S": "1e9",
    "BLUELINE_WEBHOOK_RATE_PER_SETUP_PER_S": "1e9",
    "BLUELINE_GRAPHQL_RATE_PER_KEY_PER_S": "1e9",
    "BLUELINE_AUTH_FAILURES_PER_CLIENT_PER_S": "1e9",
    # Fan-out opens thousands of sockets from this one address.
    "BLUELINE_WS_MAX_CONNECTIONS_PER_CLIENT": "100000",
    "BLUELINE_WS_MAX_CONNECTIONS": "100000",
}


def server_env(
    *,
    database_url: str,
    redis_url: str,
    port: int,
    encryption_keys: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A ``blueline serve``-equivalent configuration; no background reconciliation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "BLUELINE_DATABASE_URL": database_url,
            "BLUELINE_REDIS_URL": redis_url,
            "BLUELINE_ENCRYPTION_KEYS": encryption_keys,
            "BLUELINE_HOST": HOST,
            "BLUELINE_PORT": str(port),
            "BLUELINE_PUBLIC_BASE_URL": f"http://{HOST}:{port}",
            # Seeded setups have no upstream subaccount: periodic reconciliation would
            # only add provider calls that fail.
            "BLUELINE_RECONCILE_INTERVAL_S": "0",
            **UNREACHABLE_RATE_LIMITS,
        }
    )
    env.update(extra or {})
    return env


class ServerProcess:
    """``python -m bench.server``: ``create_app(settings)`` under one uvicorn worker."""

    ready_path = "/readyz"

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path, *args: str) -> None:
        self.name = name
        self.port = int(env["BLUELINE_PORT"])
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                self.command(*args),
                env=dict(env),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bench.server", *args]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2, trust_env=False) as client:
            while True:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                try:
                    if (await client.get(self.ready_path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} not ready in {timeout_s} s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10, trust_env=False) as client:
            response = await client.get("/bench/stats")
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        self.popen.wait()


# (name, environment, extra arguments of ``python -m bench.server``)
ServerSpec = tuple[str, dict[str, str], list[str]]


class SandboxProcess(ServerProcess):
    """``blueline sandbox-provider``: the provider simulator in a process of its own, as a
    real provider would be; ``BLUELINE_PORT`` in ``env`` is where it listens."""

    ready_path = "/sandbox/config"

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from blueline.cli import main; main()",
            "sandbox-provider",
            "--host",
            HOST,
            "--port",
            str(self.port),
            *args,
        ]


def sandbox_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
    env.update({"PYTHONUNBUFFERED": "1", "BLUELINE_PORT": str(port)})
    return env


@asynccontextmanager
async def running_servers(
    specs: list[ServerSpec], log_dir: Path, kind: type[ServerProcess] = ServerProcess
) -> AsyncIterator[list[ServerProcess]]:
    """Start servers (name, env, args), wait until each is ready, stop them all at the end."""
    servers: list[ServerProcess] = []
    try:
        for name, env, args in specs:
            servers.append(kind(name, env, log_dir, *args))
        await asyncio.gather(*(server.wait_ready() for server in servers))
        yield servers
    finally:
        for server in reversed(servers):
            server.stop()


# ----------------------------------------------------------------------- profiling


class Profiler:
    """py-spy sampling of a server process, written as collapsed stacks (``--format raw``)."""

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(binary).exists():
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self._process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _frame_name(frame: str) -> tuple[str, str]:
    """``func (pkg/mod.py:12)`` -> (``func (pkg/mod.py)``, package).

    py-spy names files relative to their import root (``sqlalchemy/orm/session.py``,
    ``blueline/webhooks/intake.py``, ``typing.py``); generated code is in ``<...>``.
    """
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    if path.startswith("<"):
        word = path[1:].split(" ", 1)[0].rstrip(">")
        package = word if word not in ("frozen", "string") else "stdlib"
    elif "site-packages/" in path:
        package = path.split("site-packages/", 1)[1].split("/", 1)[0]
    elif "/src/blueline/" in path or path.startswith("blueline/"):
        package = "blueline"
    elif "/bench/" in path or path.startswith("bench/"):
        package = "bench"
    elif "/" in path and not path.startswith("/"):
        package = path.split("/", 1)[0]
    else:
        package = "stdlib"
    if package in STDLIB_PACKAGES:
        package = "stdlib"
    return f"{func} ({path})", package


STDLIB_PACKAGES = {"asyncio", "json", "logging", "re", "urllib", "concurrent", "email", "http"}


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self time by function and by package, inclusive time by function, as shares."""
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"file": str(path), "samples": 0}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += count
        name, package = _frame_name(frames[-1])
        self_fn[name] += count
        self_pkg[package] += count
        for seen in {_frame_name(f)[0] for f in frames}:
            inclusive[seen] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(v / total, 4)) for k, v in counter.most_common(n)] if total else []

    return {
        "file": str(path),
        "samples": total,
        "self_by_package": shares(self_pkg, top),
        "self_by_function": shares(self_fn, top),
        "inclusive_by_function": shares(inclusive, top * 3),
    }
