"""The audit trail also refuses SQLite's INSERT OR REPLACE of an existing row.

REPLACE deletes the conflicting row without firing DELETE triggers (unless recursive_triggers is
on, per connection), so 0001's triggers let a hand-written `INSERT OR REPLACE INTO audit (id, ...)`
rewrite a diagnosis. A row whose id is taken is refused before the insert. PostgreSQL has no
REPLACE; its `ON CONFLICT DO UPDATE` fires 0001's UPDATE trigger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APPEND_ONLY = "audit rows are append-only: record a new row instead"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER audit_no_replace BEFORE INSERT ON audit "
                   "WHEN EXISTS (SELECT 1 FROM audit WHERE id = NEW.id) "
                   f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER audit_no_replace")
