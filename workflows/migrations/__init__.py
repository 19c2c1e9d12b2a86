"""Alembic migrations of the run registry's schema (run by :func:`workflows.runs_db.migrate`)."""
