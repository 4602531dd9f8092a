"""What the review tests share: the reviewers they name, as accounts (the store refuses a review by any
other name); imported by each module, where it applies to every test that uses the `store` fixture."""

import pytest

from core.store import accounts


@pytest.fixture(autouse=True)
def reviewers(request):
    """The reviewers these tests name, as accounts: the store refuses a review by any other name."""
    if "store" in request.fixturenames:
        for name in ("bob", "cy", "dee", "carol", "ann"):
            accounts.add_account(request.getfixturevalue("store"), name, None, "pathologist")
