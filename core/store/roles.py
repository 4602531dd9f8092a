"""The two roles and what each may do: one definition for the pages, the CLI and the accounts.

A pathologist diagnoses, runs slides, reviews and sees their own history; an administrator may
also retrain, compare and activate models, manage accounts and read the audit trail.
"""

ROLES = ("pathologist", "admin")
_PATHOLOGIST = {"diagnose", "slides", "review", "own_history", "dataset", "performance", "gallery"}
PERMISSIONS = {
    "pathologist": frozenset(_PATHOLOGIST),
    "admin": frozenset(_PATHOLOGIST | {"retrain", "compare", "activate_model", "accounts", "audit"}),
}


def can(role: str | None, action: str) -> bool:
    """Whether `role` may do `action` (None, signed out: nothing)."""
    return action in PERMISSIONS.get(role or "", frozenset())
