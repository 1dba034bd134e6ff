"""The simulator's memory and the provider's rules: lifecycle, placements, releases.

Every mutation is synchronous, so a check-then-insert cannot interleave with another
request on the event loop: overlapping creates for one ``external_id`` share a
subaccount without any lock. Background work (timed placements, webhook deliveries)
runs in tasks this state owns and cancels on shutdown.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

import httpx
import msgspec

from blueline_sandbox.domain import (
    Line,
    SandboxConfig,
    Subaccount,
    SubaccountStatus,
    WebhookEvent,
    new_token,
)
from blueline_sandbox.errors import Conflict, NotFound, SubaccountSuspended
from blueline_sandbox.phone_numbers import NumberPool
from blueline_sandbox.webhooks import WebhookSender, new_webhook_secret

__all__ = ["SandboxState"]

logger = logging.getLogger(__name__)


class SandboxState:
    """One simulated provider: what it holds, and the calls both APIs make on it.

    Partner calls take a subaccount found with :meth:`open_subaccount`, so a closed one
    is never touched; sandbox controls look records up themselves and may act where a
    partner could not (a suspended subaccount, a line nobody asked for).
    """

    def __init__(
        self,
        partner_key: str,
        *,
        auto_assign_after_s: float | None = 3.0,
        webhook_client: httpx.AsyncClient | None = None,
        webhook_attempts: int = 6,
        webhook_backoff_s: float = 0.5,
        webhook_timeout_s: float = 5.0,
    ) -> None:
        if not partner_key:
            raise ValueError("partner_key must not be empty")
        self._partner_key = partner_key.encode()
        self.defaults = SandboxConfig(auto_assign_after_s=auto_assign_after_s)
        self.config = self.defaults
        self._sender = WebhookSender(
            webhook_client,
            attempts=webhook_attempts,
            backoff_s=webhook_backoff_s,
            timeout_s=webhook_timeout_s,
        )
        self._subaccounts: dict[str, Subaccount] = {}
        self._by_external_id: dict[str, Subaccount] = {}
        self._lines: dict[str, Line] = {}
        self._numbers = NumberPool()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._random = secrets.SystemRandom()

    # -- request gates

    def is_partner(self, authorization: str | None) -> bool:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(key.strip().encode(), self._partner_key)

    def should_fail(self) -> bool:
        rate = self.config.failure_rate
        return rate > 0 and self._random.random() < rate

    # -- partner API

    def create_subaccount(
        self, business_name: str, external_id: str, webhook_url: str
    ) -> tuple[Subaccount, bool]:
        """The subaccount for ``external_id``, created with its first line if new.

        A closed one is returned too: the provider never reuses an external id.
        """
        existing = self._by_external_id.get(external_id)
        if existing is not None:
            return existing, False
        subaccount = Subaccount(
            id=new_token("sa"),
            business_name=business_name,
            external_id=external_id,
            webhook_url=webhook_url,
            api_key=new_token("ak"),
            api_secret=secrets.token_urlsafe(32),
            webhook_secret=new_webhook_secret(),
        )
        self._subaccounts[subaccount.id] = subaccount
        self._by_external_id[external_id] = subaccount
        self._add_line(subaccount)
        return subaccount, True

    def subaccounts(self, external_id: str | None = None) -> list[Subaccount]:
        if external_id is None:
            return list(self._subaccounts.values())
        found = self._by_external_id.get(external_id)
        return [] if found is None else [found]

    def open_subaccount(self, subaccount_id: str) -> Subaccount:
        """A subaccount the partner API may act on: known and not closed."""
        subaccount = self._subaccounts.get(subaccount_id)
        if subaccount is None or subaccount.status == "closed":
            raise NotFound("no such subaccount")
        return subaccount

    def request_line(self, subaccount: Subaccount) -> Line:
        if subaccount.status == "suspended":
            raise SubaccountSuspended()
        return self._add_line(subaccount)

    def rename(self, subaccount: Subaccount, business_name: str) -> Subaccount:
        subaccount.business_name = business_name
        return subaccount

    def suspend(self, subaccount: Subaccount) -> Subaccount:
        subaccount.status = "suspended"
        return subaccount

    def reactivate(self, subaccount: Subaccount) -> Subaccount:
        subaccount.status = "active"
        return subaccount

    def close(self, subaccount: Subaccount) -> None:
        subaccount.status = "closed"
        for line in subaccount.lines:
            self._release(line)

    def release_line(self, subaccount: Subaccount, request_id: str) -> Line:
        """Cancel a pending request or give back an assigned number; repeats are no-ops."""
        line = self._lines.get(request_id)
        # Another subaccount's request is reported exactly like one that never existed.
        if line is None or line.subaccount_id != subaccount.id:
            raise NotFound("no such line request")
        self._release(line)
        return line

    # -- sandbox controls

    def configure(self, config: SandboxConfig) -> None:
        self.config = config

    def assign(self, request_id: str, phone_number: str | None) -> Line:
        """Place a pending line now; repeating the same placement is a no-op."""
        line = self._line(request_id)
        if line.status == "released":
            raise Conflict("line request is released")
        if line.status == "assigned":
            if phone_number is None or phone_number == line.phone_number:
                return line
            raise Conflict("line request is already assigned to another number")
        if phone_number is not None and not self._numbers.is_free(phone_number):
            raise Conflict("phone number is already assigned to another line")
        number = phone_number if phone_number is not None else self._numbers.pick()
        self._place(line, number, announce=self.config.deliver_webhooks)
        return line

    def redeliver(self, request_id: str) -> WebhookEvent:
        """Send the last event of a request again, whatever ``deliver_webhooks`` says."""
        line = self._lines.get(request_id)
        if line is None or line.last_event is None:
            raise NotFound("no event for this line request")
        event = line.last_event
        self._spawn(self._sender.deliver(self._subaccounts[line.subaccount_id], event))
        return event

    def force_status(self, subaccount_id: str, status: SubaccountStatus) -> Subaccount:
        """Change a subaccount's status behind the partner's back (no webhook)."""
        subaccount = self._subaccount(subaccount_id)
        if subaccount.status == "closed" and status != "closed":
            raise Conflict("a closed subaccount cannot be reopened")
        if status == "closed":
            self.close(subaccount)
        else:
            subaccount.status = status
        return subaccount

    def force_release(self, request_id: str) -> Line:
        """Release a line behind the partner's back (no webhook)."""
        line = self._line(request_id)
        self._release(line)
        return line

    def inject_line(self, subaccount_id: str) -> Line:
        """A line request the partner never saw the answer to; it is placed as usual.

        Allowed on a suspended subaccount, where the partner API would refuse: the
        point is to reach states a client must cope with, however it got there.
        """
        subaccount = self._subaccount(subaccount_id)
        if subaccount.status == "closed":
            raise Conflict("the subaccount is closed")
        return self._add_line(subaccount)

    # -- lifecycle

    def start(self) -> None:
        self._stopping = False

    async def aclose(self) -> None:
        """Cancel background work and close an owned HTTP client (idempotent)."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._sender.aclose()

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    # -- internals

    def _subaccount(self, subaccount_id: str) -> Subaccount:
        subaccount = self._subaccounts.get(subaccount_id)
        if subaccount is None:
            raise NotFound("no such subaccount")
        return subaccount

    def _line(self, request_id: str) -> Line:
        line = self._lines.get(request_id)
        if line is None:
            raise NotFound("no such line request")
        return line

    def _add_line(self, subaccount: Subaccount) -> Line:
        line = Line(request_id=new_token("lr"), subaccount_id=subaccount.id)
        subaccount.lines.append(line)
        self._lines[line.request_id] = line
        config = self.config
        if config.assign_immediately:
            # Returned already assigned: the caller learns the number from the answer.
            self._place(line, self._numbers.pick(), announce=False)
        elif config.auto_assign_after_s is not None:
            self._spawn(self._auto_assign(line, config.auto_assign_after_s))
        return line

    def _release(self, line: Line) -> None:
        if line.status == "released":
            return
        if line.status == "assigned" and line.phone_number is not None:
            self._numbers.free(line.phone_number)
        line.status = "released"

    def _place(self, line: Line, number: str, *, announce: bool) -> None:
        line.status = "assigned"
        line.phone_number = number
        self._numbers.claim(number)
        body = msgspec.json.encode(
            {
                "type": "line.assigned",
                "data": {
                    "subaccount_id": line.subaccount_id,
                    "request_id": line.request_id,
                    "phone_number": number,
                },
            }
        )
        # The event exists even when unannounced, so a lost delivery can be replayed.
        event = WebhookEvent(webhook_id=new_token("msg"), request_id=line.request_id, body=body)
        line.last_event = event
        if announce:
            self._spawn(self._sender.deliver(self._subaccounts[line.subaccount_id], event))

    async def _auto_assign(self, line: Line, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        # Only a release stops a placement: a suspended subaccount still gets its
        # numbers, and a closed one has released every line.
        if line.status != "pending":
            return
        # A placement is announced according to the config at the time it happens.
        self._place(line, self._numbers.pick(), announce=self.config.deliver_webhooks)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._stopping:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("sandbox background task failed", exc_info=exc)
