"""Alembic migrations of the store (run by core.store.db.upgrade; script_location is this folder)."""
