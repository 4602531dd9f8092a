"""The audit trail's hash chain: a chain_sha256 column, filled in for the rows already there.

Each row's hash links it to the row before it (core.store.chain), so an edit or a removal made
around the triggers is detected by `python -m core db verify`. Rows written before this revision
are chained here, in id order, as they are now: the chain vouches for them from this point on.
Filling them is an UPDATE, which the append-only trigger refuses, so that one trigger is dropped
and made again inside this migration's transaction (the other triggers, if any are missing, too).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

from core.store import chain
from core.store.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

audit = sa.table("audit", sa.column("id", sa.Integer), sa.column("at", UTCDateTime), sa.column("kind", sa.String),
                 sa.column("user", sa.String), sa.column("subject", sa.Text), sa.column("image_sha256", sa.String),
                 sa.column("model", sa.Text), sa.column("model_sha256", sa.String),
                 sa.column("app_version", sa.String), sa.column("refers_to", sa.Integer),
                 sa.column("details", sa.JSON), sa.column("chain_sha256", sa.String))


def upgrade() -> None:
    op.add_column("audit", sa.Column("chain_sha256", sa.String(64), nullable=True))
    bind = op.get_bind()
    row_trigger = "audit_no_update" if bind.dialect.name == "sqlite" else "audit_no_change"
    op.execute(f"DROP TRIGGER IF EXISTS {row_trigger}" + ("" if bind.dialect.name == "sqlite" else " ON audit"))
    previous, after = None, 0
    while rows := bind.execute(sa.select(audit).where(audit.c.id > after).order_by(audit.c.id)
                               .limit(chain.BATCH)).mappings().all():
        for row in rows:
            previous = chain.link(previous, row)
            bind.execute(sa.update(audit).where(audit.c.id == row["id"]).values(chain_sha256=previous))
        after = rows[-1]["id"]
    chain.restore_triggers(bind)


def downgrade() -> None:
    raise NotImplementedError("the audit trail's hash chain is never dropped by a migration")
