"""Storage: engine and sessions, table models, queries and Alembic migrations."""
