"""A private PostgreSQL cluster that a test may stop, crash and start again.

The shared server on 5432 serves every other test on the machine and must never go
down, so failure drills run their own: ``initdb`` into a temporary directory, a free
port, ``fsync=off`` (a crash of the server process loses nothing: the WAL of every
commit was handed to the OS before the commit returned). As root the binaries run as the
``postgres`` user, as the server refuses to run as root.

Every cluster is stopped and its directory removed when the test process exits, even
after a failure; clusters left by a test process that was itself killed are reaped by
the next one to start a cluster (their directories name the owning process).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from tests.support.asgi_server import HOST, free_port
from tests.support.databases import sqlalchemy_url

BIN_DIR = Path(os.environ.get("BLUELINE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_PREFIX = "blueline-pg-"
_START_TIMEOUT_S = 30
_LIVE: set[PrivateCluster] = set()


def _as_postgres() -> list[str]:
    """The prefix that runs a server binary as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PrivateCluster:
    """One ``initdb`` cluster on 127.0.0.1; ``dsn`` is its ``postgres`` database."""

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        _reap_orphans()
        self.directory = Path(
            tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}-")
        )
        self.data = self.directory / "data"
        self.port = free_port()
        self.settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            # Writes still reach the OS before a commit returns, so a crash of the
            # server (not of the machine) loses nothing; synchronous_commit must stay
            # on for that, or the last commits before a crash would vanish.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            **(settings or {}),
        }
        self._initialised = False
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"PrivateCluster(port={self.port})"

    # -- addresses

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL Blueline is configured with."""
        return sqlalchemy_url(self.dsn(database))

    # -- lifecycle

    def _run(self, *args: str, timeout: float = _START_TIMEOUT_S) -> None:
        completed = subprocess.run(
            [*_as_postgres(), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {completed.returncode}\n{completed.stdout}\n"
                f"{completed.stderr}\n{self.log_tail()}"
            )

    def _init(self) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._run(
            str(BIN_DIR / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self._initialised = True

    def start(self) -> None:
        """Start (initialising on first use) and wait until it accepts connections."""
        if not self._initialised:
            self._init()
        options = " ".join(f"-c {name}={value}" for name, value in self.settings.items())
        self._run(
            str(BIN_DIR / "pg_ctl"),
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-o",
            options,
        )

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every backend dies at once, nothing is flushed,
        clients see their connections drop mid-statement."""
        self._stop("immediate")

    def stop(self) -> None:
        self._stop("fast")

    def restart(self) -> None:
        """Start again after a :meth:`crash` (crash recovery replays the WAL)."""
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server and every backend: connections stay open and nothing
        answers, as when the database's host or the network to it hangs."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, number: int) -> None:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        # The server first: once it is stopped it forks no backend that the listing
        # below would miss (one forked mid-listing went on answering queries).
        os.kill(postmaster, number)
        for pid in self._children(postmaster):
            # A backend may have exited since it was listed.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

    def _children(self, postmaster: int) -> list[int]:
        children = []
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("PPid:") and int(line.split()[1]) == postmaster:
                        children.append(int(status.parent.name))
                        break
        return children

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def _stop(self, mode: str) -> None:
        if not self.running:
            return
        self._run(str(BIN_DIR / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w")

    def cleanup(self) -> None:
        """Stop whatever runs and remove the directory; safe to call more than once."""
        with contextlib.suppress(Exception):
            self.thaw()
        with contextlib.suppress(Exception):
            self._stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
        _LIVE.discard(self)

    # -- inspection

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def create_database(self, name: str | None = None) -> str:
        """A new empty database; its name (``blueline serve`` migrates it on start)."""
        name = name or f"drill_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_dsn, timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def wait_accepting(self, timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                conn = await asyncpg.connect(self.admin_dsn, timeout=1)
            except (OSError, asyncpg.PostgresError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
            else:
                await conn.close()
                return


@contextmanager
def private_cluster(**settings: str) -> Iterator[PrivateCluster]:
    """A started cluster, stopped and removed when the block ends, however it ends."""
    cluster = PrivateCluster(settings=settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


def _reap_orphans() -> None:
    """Stop and remove clusters whose test process no longer exists (it was killed)."""
    base = Path(tempfile.gettempdir())
    for directory in base.glob(f"{_PREFIX}*"):
        owner = directory.name.removeprefix(_PREFIX).split("-", 1)[0]
        if not owner.isdigit() or _pid_alive(int(owner)):
            continue
        data = directory / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                stop = [str(BIN_DIR / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"]
                subprocess.run(
                    [*_as_postgres(), *stop, "-w"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=_START_TIMEOUT_S,
                    check=False,
                )
        shutil.rmtree(directory, ignore_errors=True)


@atexit.register
def _cleanup_all() -> None:
    for cluster in list(_LIVE):
        cluster.cleanup()
