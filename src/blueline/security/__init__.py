"""Secrets at rest (the credential vault) and API key minting and checking."""
