"""Domain services: create setups, request and assign lines, recover and reconcile."""
