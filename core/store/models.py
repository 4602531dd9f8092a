"""The store's tables as SQLAlchemy 2 models: accounts, sign-in sessions and the append-only audit trail.

Three tables. `users` is ordinary mutable state (a password change updates the row) and every change
to it is also written to the audit trail. `audit` is append-only: one row per thing that happened
(a diagnosis, a slide run, a review, a sign-in, a model activation, a retraining, an account
change). `sessions` holds one row per sign-in that a browser may resume after a reload
(core.store.sessions: revoked, never deleted). A review or correction is a new row pointing at the row it reviews (`refers_to`), so the
history of a result is the rows that refer to it, and nothing is ever rewritten. The schema itself
is created by the Alembic migrations in core/store/migrations, never by `create_all`.
"""

from __future__ import annotations

import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both back ends (SQLite keeps no zone; PostgreSQL does)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("store times must be timezone-aware (UTC)")
        return None if value is None else value.astimezone(datetime.UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value.astimezone(datetime.UTC)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    """A local or single-sign-on account. `password_hash` is argon2 (None for SSO-only accounts)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, default=utc_now)
    failed_sign_ins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_sign_in: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    """One thing that happened. Never updated or deleted (the store refuses, and so does a trigger); each
    row is linked to the one before it by a hash chain, so a change made around both is detected."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, default=utc_now, index=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    user: Mapped[str] = mapped_column(String(120), index=True)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)  # file, model or account name
    image_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    app_version: Mapped[str | None] = mapped_column(String(40), nullable=True)
    refers_to: Mapped[int | None] = mapped_column(ForeignKey("audit.id"), nullable=True, index=True)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    # SHA-256 of the previous row's chain_sha256 and this row's content (core.store.chain); None only for
    # a row written around the store.
    chain_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class WebSession(Base):
    """One sign-in a browser may resume (core.store.sessions). `id` is the SHA-256 of the random
    session id the signed cookie carries; a revoked row stays (revoked_at, why) and is never reused."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, default=utc_now)
    last_seen: Mapped[datetime.datetime] = mapped_column(UTCDateTime, default=utc_now)
    expires_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
