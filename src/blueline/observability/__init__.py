"""Logs (structlog, redacted), Prometheus metrics and request ids."""
