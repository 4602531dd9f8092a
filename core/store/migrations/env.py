"""Alembic environment: always online, on the connection core.store.db hands over.

The store opens the engine itself (SQLite pragmas, clear errors) and passes its connection in
`config.attributes["connection"]`, so the app, the CLI and the tests migrate the same way and
no alembic.ini or URL is needed.
"""

from alembic import context

from core.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
