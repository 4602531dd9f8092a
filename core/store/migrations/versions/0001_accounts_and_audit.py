"""Accounts and the append-only audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from core.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "audit rows are append-only: record a new row instead"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("failed_sign_ins", sa.Integer, nullable=False),
        sa.Column("locked_until", UTCDateTime, nullable=True),
        sa.Column("last_sign_in", UTCDateTime, nullable=True),
    )
    op.create_index("ix_users_name", "users", ["name"], unique=True)
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("user", sa.String(120), nullable=False),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=True),
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("app_version", sa.String(40), nullable=True),
        sa.Column("refers_to", sa.Integer, sa.ForeignKey("audit.id"), nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
    )
    for column in ("at", "kind", "user", "image_sha256", "refers_to"):
        op.create_index(f"ix_audit_{column}", "audit", [column])
    # The database itself refuses to change the trail, whatever client writes to it.
    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_no_{action.lower()} BEFORE {action} ON audit "
                       f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")
    else:
        op.execute("CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$")
        op.execute("CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION audit_append_only()")
        op.execute("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()")


def downgrade() -> None:
    raise NotImplementedError("the audit trail is never dropped by a migration")
