"""The two roles and what each may do: one definition for the pages, the CLI and the accounts.

A pathologist diagnoses, runs slides, reviews and sees their own history, and chooses among the
deployment's models for their own session (choose_model: the default and the folders of models/,
core.app.session.models_for); an administrator may also retrain, compare, choose any model, Retrain's
unevaluated runs in runs/ included (activate_model), manage accounts and read the audit trail.
"""

ROLES = ("pathologist", "admin")
_PATHOLOGIST = {"diagnose", "slides", "review", "own_history", "choose_model", "dataset", "performance", "gallery"}
PERMISSIONS = {
    "pathologist": frozenset(_PATHOLOGIST),
    "admin": frozenset(_PATHOLOGIST | {"retrain", "compare", "activate_model", "accounts", "audit"}),
}


def can(role: str | None, action: str) -> bool:
    """Whether `role` may do `action` (None, signed out: nothing)."""
    return action in PERMISSIONS.get(role or "", frozenset())
