"""Two servers on one database for the differential tests: one answers through the
compiled path where it can (the default), the other executes everything through
Strawberry (``compiled_reads=False``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from litestar import Litestar

from blueline.app import create_app
from tests.conftest import make_settings, served_like
from tests.support.asgi_server import serve_asgi


@contextmanager
def compiled_and_ordinary(
    database_url: str, sandbox_url: str
) -> Iterator[tuple[tuple[str, Litestar], tuple[str, Litestar]]]:
    """``(url, app)`` of the compiling server, then of the executing one."""
    compiled = make_settings(database_url, sandbox_url)
    ordinary = make_settings(database_url, sandbox_url, compiled_reads=False)
    ordinary = ordinary.model_copy(update={"encryption_keys": compiled.encryption_keys})
    compiled_app, ordinary_app = create_app(compiled), create_app(ordinary)
    with (
        serve_asgi(compiled_app, port=compiled.port, **served_like(compiled)) as a,
        serve_asgi(ordinary_app, port=ordinary.port, **served_like(ordinary)) as b,
    ):
        yield (a, compiled_app), (b, ordinary_app)
