"""Run the Node side of the suite (tests/js: Chromium via playwright-core, JS clients).

Node scripts get their arguments as one JSON object on stdin (an API key on argv would
be visible to every local user) and answer with one JSON object on their last stdout
line. A missing or outdated ``tests/js/node_modules`` fails the test with the command
that fixes it: a skipped browser test would hide exactly what it exists to catch.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "js"
INSTALL_COMMAND = "npm ci --prefix tests/js"
MIN_NODE_MAJOR = 20  # playwright-core and graphql-ws 6 need it
DEFAULT_CHROMIUM = "/usr/bin/chromium"


class NodeScriptError(AssertionError):
    """A Node script failed; ``result`` is its JSON answer when it printed one."""

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


def node_path() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: apt-get install -y nodejs npm", pytrace=False)
    return node


def chromium_path() -> str:
    """The system Chromium the browser scripts drive (``CHROMIUM_PATH`` overrides it)."""
    path = os.environ.get("CHROMIUM_PATH", DEFAULT_CHROMIUM)
    if not os.access(path, os.X_OK):
        pytest.fail(f"Chromium not found at {path}: apt-get install -y chromium", pytrace=False)
    return path


@functools.cache
def _node_modules_problem() -> str | None:
    version = subprocess.run(
        [node_path(), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        return f"node {version} is too old: tests/js needs Node {MIN_NODE_MAJOR} or newer"
    # npm records what it actually installed here; comparing it with the lockfile also
    # catches an install made with plain `npm install` or from an older lockfile.
    installed_file = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed_file.is_file():
        return "tests/js/node_modules is missing"
    wanted = json.loads((NODE_DIR / "package-lock.json").read_text(encoding="utf-8"))
    installed = json.loads(installed_file.read_text(encoding="utf-8")).get("packages", {})
    for name, entry in wanted.get("packages", {}).items():
        if not name:
            continue  # the root project itself
        have = installed.get(name)
        if have is None and entry.get("optional"):
            continue  # another platform's binary
        if have is None or have.get("version") != entry.get("version"):
            found = have.get("version") if have else "nothing"
            return (
                f"tests/js/node_modules is out of date with package-lock.json "
                f"({name}: want {entry.get('version')}, found {found})"
            )
    return None


def ensure_node_modules() -> None:
    """Fail (never skip) unless tests/js/node_modules matches its lockfile."""
    problem = _node_modules_problem()
    if problem is not None:
        pytest.fail(f"{problem}: run `{INSTALL_COMMAND}` (make test does it)", pytrace=False)


def run_node(script: Path, args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``node script`` with ``args`` as JSON on stdin; return its last-line JSON.

    Raises :class:`NodeScriptError`, with the script's stdout and stderr, when it exits
    non-zero, prints no JSON object last, or runs past ``timeout_s`` (then it and the
    browser it started are killed).
    """
    ensure_node_modules()
    # A private TMPDIR holds the browser profile, so it can be removed even after a kill.
    tmp = tempfile.mkdtemp(prefix="blueline-node-")
    try:
        env = {**os.environ, "CHROMIUM_PATH": chromium_path(), "TMPDIR": tmp}
        # Its own session, so a timeout kills node and what it spawned; Chromium, which
        # Playwright detaches, exits by itself once node's end of its pipe is gone.
        process = subprocess.Popen(
            [node_path(), str(script)],
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(json.dumps(args), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise NodeScriptError(
                f"{script.name} did not finish in {timeout_s}s\n{_output(stdout, stderr)}"
            ) from None
    finally:
        _remove_soon(Path(tmp))

    result = _last_json_line(stdout)
    if process.returncode != 0 or result is None:
        raise NodeScriptError(
            f"{script.name} exited {process.returncode}\n{_output(stdout, stderr)}", result
        )
    return result


def _remove_soon(path: Path, within_s: float = 5.0) -> None:
    # A killed run's Chromium may still be writing its profile for a moment.
    deadline = time.monotonic() + within_s
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _output(stdout: str, stderr: str) -> str:
    return f"--- stdout ---\n{stdout.rstrip()}\n--- stderr ---\n{stderr.rstrip()}"
