"""Upstream iMessage provider: the HTTP client Blueline uses to reach it."""
