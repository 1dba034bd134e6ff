"""A simulator of the upstream iMessage provider, as its own ASGI app.

It speaks the provider's HTTP API (subaccounts, line requests and their lifecycle) and
announces placements with Standard Webhooks signatures, so a client can be developed
and tested against it end to end. Controls under ``/sandbox`` inject what a real
provider does on its own: errors, slow answers, lost webhooks, and changes made
upstream without telling the client.

The package is an independent implementation of the provider side and shares no code
with any client of it. All state lives in memory, one :class:`SandboxState` per app.
"""

from blueline_sandbox.app import create_sandbox_app, sandbox_state
from blueline_sandbox.domain import SandboxConfig
from blueline_sandbox.state import SandboxState

__all__ = ["SandboxConfig", "SandboxState", "create_sandbox_app", "sandbox_state"]
