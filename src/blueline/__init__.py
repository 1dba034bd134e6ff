"""Blueline: iMessage channel provisioning service."""

__version__ = "0.1.0"
