"""Alembic migrations of the ffrtmp schema (shipped as `controller._migrations`)."""
