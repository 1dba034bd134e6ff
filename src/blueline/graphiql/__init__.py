"""A GraphiQL page whose every asset ships inside this package.

GraphiQL usually loads React and itself from a public CDN, which leaves the page on
"Loading…" wherever there is no internet or a strict Content-Security-Policy. Here the
page only references files under :data:`ASSET_PATH`, served from ``assets/`` by
:func:`asset`. Framework-free on purpose: the web app decides how to route and cache.
"""

from __future__ import annotations

import functools
import html
from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["ASSET_PATH", "CONTENT_SECURITY_POLICY", "asset", "render_page"]

ASSET_PATH = "/_graphiql"

# The page runs under this policy (no inline script or style, nothing from another
# origin); data: covers the fonts GraphiQL's stylesheet embeds and the blank favicon.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

# React must come before GraphiQL, which expects it as a global.
_STYLES = ("graphiql.min.css", "blueline-graphiql.css")
_SCRIPTS = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
    "graphql-ws.min.js",
    "blueline-graphiql.js",
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Blueline GraphiQL</title>
<link rel="icon" href="data:,">
{styles}
</head>
<body>
<p class="blueline-hint">Queries need an API key: in the <b>Headers</b> tab below, replace
<code>&lt;your key&gt;</code> in <code>{{"Authorization": "Bearer &lt;your key&gt;"}}</code>.</p>
<noscript><p class="blueline-hint">GraphiQL needs JavaScript. Without it, send GraphQL
as JSON in a POST to <code>{graphql_path}</code> with the header
<code>Authorization: Bearer &lt;your key&gt;</code>.</p></noscript>
<div id="graphiql" data-graphql-path="{graphql_path}">Loading…</div>
{scripts}
</body>
</html>
"""


def render_page(graphql_path: str = "/graphql") -> str:
    """The GraphiQL page for the endpoint at ``graphql_path`` on the page's own origin.

    Only a path is accepted, so the page can never point at another host; HTTP and
    WebSocket URLs are derived from the browser's location.
    """
    if not graphql_path.startswith("/") or graphql_path.startswith("//"):
        raise ValueError(f"graphql_path must be a path on this origin, got {graphql_path!r}")
    styles = "\n".join(f'<link rel="stylesheet" href="{_url(name)}">' for name in _STYLES)
    scripts = "\n".join(f'<script src="{_url(name)}"></script>' for name in _SCRIPTS)
    return _PAGE.format(styles=styles, scripts=scripts, graphql_path=html.escape(graphql_path))


def asset(name: str) -> tuple[bytes, str] | None:
    """The bytes and media type of the shipped asset ``name``, or None if there is none.

    ``name`` is looked up among the files actually shipped, never joined onto a path,
    so ``../``, absolute paths and subfolders (licence texts) cannot be reached.
    """
    if name not in _catalogue():
        return None
    return _read(name), _MEDIA_TYPES[_suffix(name)]


def _url(name: str) -> str:
    return f"{ASSET_PATH}/{name}"


def _suffix(name: str) -> str:
    return name[name.rfind(".") :] if "." in name else ""


@functools.cache
def _catalogue() -> dict[str, Traversable]:
    folder = files(__name__) / "assets"
    return {
        entry.name: entry
        for entry in folder.iterdir()
        if entry.is_file() and _suffix(entry.name) in _MEDIA_TYPES
    }


# Keyed by names from the catalogue only, so the cache cannot grow with what callers ask.
@functools.cache
def _read(name: str) -> bytes:
    return _catalogue()[name].read_bytes()
