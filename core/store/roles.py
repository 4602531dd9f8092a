"""The two roles and what each may do: one definition for the pages, the CLI and the accounts.

A pathologist diagnoses, runs slides, reviews, and chooses among the deployment's models for their own
session (choose_model: the default and the folders of models/, core.app.session.models_for); an
administrator may also retrain, compare, choose any model, Retrain's unevaluated runs in runs/ included
(activate_model), and read the audit trail.

The Review queue and a case's history are the department's shared clinical worklist: every role that
reviews sees and reviews every user's results (file names, calls, referrals, reviews), since a second
read or a referral is someone else's result by design. Who signed in, account changes and model
choices stay in the audit trail, for administrators only. Accounts are managed on the machine itself
(`python -m core users`), not in the app, so no role grants that. Every action here is checked by the
app (tests/test_access_roles.py).
"""

ROLES = ("pathologist", "admin")
_PATHOLOGIST = {"diagnose", "slides", "review", "choose_model", "dataset", "performance", "gallery"}
PERMISSIONS = {
    "pathologist": frozenset(_PATHOLOGIST),
    "admin": frozenset(_PATHOLOGIST | {"retrain", "compare", "activate_model", "audit"}),
}


def can(role: str | None, action: str) -> bool:
    """Whether `role` may do `action` (None, signed out: nothing)."""
    return action in PERMISSIONS.get(role or "", frozenset())
