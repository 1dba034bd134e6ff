"""Upstream iMessage provider: the HTTP client Blueline uses and a local simulator of it."""
