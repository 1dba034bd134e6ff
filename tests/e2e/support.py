"""Real ``blueline`` processes for end-to-end tests.

Each process runs the installed console script with an explicit environment and working
directory, its stdout and stderr captured to files, so a test sees exactly what an
operator would: the printed lines, the files left behind, the exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tests.support.asgi_server import HOST

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0


def blueline_command() -> list[str]:
    """How to run ``blueline``: the console script next to this interpreter if installed."""
    script = Path(sys.executable).with_name("blueline")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from blueline.cli import main; main()"]


def clean_env(**variables: str | None) -> dict[str, str]:
    """This process's environment without any ``BLUELINE_*`` variable, plus ``variables``.

    A value of ``None`` leaves that variable out.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in variables.items():
        if value is not None:
            env[name] = value
    return env


def serve_env(
    *,
    database_url: str,
    provider_url: str,
    port: int,
    encryption_keys: str,
    redis_url: str | None = None,
    **extra: str | None,
) -> dict[str, str]:
    """The configuration of an API process pointed at a separate provider."""
    return clean_env(
        BLUELINE_DATABASE_URL=database_url,
        BLUELINE_PROVIDER_URL=provider_url,
        BLUELINE_PUBLIC_BASE_URL=f"http://{HOST}:{port}",
        BLUELINE_ENCRYPTION_KEYS=encryption_keys,
        BLUELINE_RECONCILE_INTERVAL_S="0",
        BLUELINE_PROVIDER_BACKOFF_S="0.01",
        BLUELINE_REDIS_URL=redis_url,
        **extra,
    )


class ProcessFailed(AssertionError):
    """A process exited or stalled where a test expected it to serve."""


class BluelineProcess:
    """One running ``blueline`` command, with its output captured under ``log_dir``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_dir: Path,
        port: int | None = None,
        health_path: str = "/healthz",
    ) -> None:
        self.name = name
        self.health_path = health_path
        self.args = list(args)
        self.env = dict(env)
        self.cwd = cwd
        self.port = port
        self.killed = False
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.monotonic_ns()
        self.stdout_path = log_dir / f"{name}-{stamp}.stdout.log"
        self.stderr_path = log_dir / f"{name}-{stamp}.stderr.log"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [*blueline_command(), *self.args],
                env=self.env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def __repr__(self) -> str:
        return f"BluelineProcess({self.name!r}, pid={self.pid}, port={self.port})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise ValueError(f"{self.name} does not listen on a port")
        return f"http://{HOST}:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self, tail: int = 4000) -> str:
        return (
            f"{self.name} {' '.join(self.args)} (pid {self.pid}, exit {self.returncode})\n"
            f"--- stdout ---\n{self.stdout()[-tail:]}\n--- stderr ---\n{self.stderr()[-tail:]}"
        )

    def wait_healthy(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Block until ``GET {health_path}`` answers 200; fail with the captured output if the
        process exits first or the time runs out (the process is then stopped)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=1.0) as client:
            while True:
                if self.returncode is not None:
                    raise ProcessFailed(f"exited before it was healthy\n{self.describe()}")
                try:
                    if client.get(self.health_path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ProcessFailed(f"not healthy within {timeout_s:.0f} s\n{self.describe()}")
                time.sleep(0.05)

    def wait(self, timeout_s: float = CLI_TIMEOUT_S) -> int:
        """Wait for the process to exit by itself; a stall is killed and reported."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_hard()
            raise ProcessFailed(
                f"still running after {timeout_s:.0f} s\n{self.describe()}"
            ) from None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; the exit status."""
        if self.returncode is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill_hard()
        return self.popen.wait()

    def kill_hard(self) -> int:
        """SIGKILL: the process gets no chance to finish anything."""
        if self.returncode is None:
            self.killed = True
            self.popen.kill()
        return self.popen.wait()


class ProcessGroup:
    """Starts processes and stops every one of them on :meth:`stop_all`, whatever happened."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[BluelineProcess] = []

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        port: int | None = None,
        health_path: str = "/healthz",
    ) -> BluelineProcess:
        process = BluelineProcess(
            name,
            args,
            env=env,
            cwd=cwd,
            log_dir=self.log_dir,
            port=port,
            health_path=health_path,
        )
        self.processes.append(process)
        return process

    def serve(self, *, port: int, env: Mapping[str, str], cwd: Path) -> BluelineProcess:
        """``blueline serve --port PORT``, once it answers ``/healthz``."""
        process = self.start("serve", ["serve", "--port", str(port)], env=env, cwd=cwd, port=port)
        process.wait_healthy()
        return process

    def sandbox_provider(self, *, port: int, env: Mapping[str, str], cwd: Path) -> BluelineProcess:
        """``blueline sandbox-provider --port PORT``, once its control API answers (the
        simulator has no ``/healthz``)."""
        process = self.start(
            "sandbox-provider",
            ["sandbox-provider", "--port", str(port)],
            env=env,
            cwd=cwd,
            port=port,
            health_path="/sandbox/config",
        )
        process.wait_healthy()
        return process

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        timeout_s: float = CLI_TIMEOUT_S,
    ) -> BluelineProcess:
        """A one-shot command, waited for; check its ``returncode`` and output."""
        process = self.start(args[0], args, env=env, cwd=cwd)
        process.wait(timeout_s)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def report(self) -> str:
        return "\n\n".join(process.describe() for process in self.processes)


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout_s: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run a one-shot ``blueline`` command to completion and capture its output."""
    return subprocess.run(
        [*blueline_command(), *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def mint_key(env: Mapping[str, str], workspace: str, cwd: Path | None = None) -> str:
    """``blueline api-keys create --workspace NAME``: the key is the last line of stdout."""
    result = run_cli(["api-keys", "create", "--workspace", workspace], env, cwd)
    if result.returncode != 0:
        raise ProcessFailed(
            f"api-keys create exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise ProcessFailed(f"api-keys create printed nothing\n{result.stderr}")
    return lines[-1].strip()


def printed_api_key(stdout: str) -> str | None:
    """The key from a ``API key: <key>`` line, if the output has one."""
    for line in stdout.splitlines():
        if line.startswith("API key: "):
            return line.removeprefix("API key: ").strip()
    return None
