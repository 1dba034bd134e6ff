"""Strawberry types, generated from the read model, and the GraphQL context."""
