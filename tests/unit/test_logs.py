"""Secrets cannot reach a log line, even when code logs them by mistake."""

from __future__ import annotations

import json
import subprocess
import sys

SECRETS = [
    "s3cr3t-value-1",
    "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
    "bl_live_abcdefghijklmnopqrstuvwxyz012345",
    "tok-987654321",
    "pa55word-xyz",
]

PROGRAM = """
import logging, structlog
from blueline.observability.logs import configure_logging
configure_logging(json=True)
log = logging.getLogger("blueline.test")
log.info("provider answered %s", {"credentials": {"api_key": "k", "api_secret": "s3cr3t-value-1"}})
log.warning("retrying with Bearer bl_live_abcdefghijklmnopqrstuvwxyz012345")
log.error("secret was whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo= in a message")
log.info("formatted token=tok-987654321 and password: pa55word-xyz")
structlog.get_logger("blueline.test").info(
    "structured", webhook_secret="whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
    nested={"password": "pa55word-xyz", "fine": "visible"},
)
try:
    raise ValueError("boom: api_secret=s3cr3t-value-1")
except ValueError:
    log.exception("failed")
"""


def test_log_lines_are_json_and_carry_no_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert len(records) == 6
    assert any(r.get("nested", {}).get("fine") == "visible" for r in records)
    for secret in SECRETS:
        assert secret not in result.stderr, secret
    assert "[redacted]" in result.stderr
