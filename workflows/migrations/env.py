"""Alembic's entry point for the run registry: migrates the connection it is handed.

:func:`workflows.runs_db.migrate` passes an open connection (inside a transaction) as
``config.attributes["connection"]``; there is no ``alembic.ini`` and no offline mode.
"""

from __future__ import annotations

from alembic import context

from workflows.runs_db import VERSION_TABLE, Base


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None or context.is_offline_mode():
        raise RuntimeError(
            "the run registry migrates through workflows.runs_db.migrate(engine), "
            "which passes a connection; the alembic command line is not set up for it"
        )
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
