"""Account names and passwords that must be refused (QA review 7 and 8), on both databases."""

import pytest

from core.store import accounts


@pytest.mark.parametrize("blank", [" " * 8, "\t" * 8, "\u200b" * 8, " \u00a0" * 6])
def test_a_password_of_only_spaces_or_invisible_characters_is_refused(store, blank):
    """Eight spaces were accepted as a password (only the length was checked), and signed in."""
    with pytest.raises(ValueError, match="at least 8 characters, not only spaces"):
        accounts.add_account(store, "blank-pw", blank, "pathologist")
    accounts.add_account(store, "ann", "correct horse", "pathologist")
    with pytest.raises(ValueError, match="not only spaces"):
        accounts.change_account(store, "ann", accounts.SYSTEM, password=blank)
    assert [a["name"] for a in accounts.list_accounts(store)] == ["ann"]
    assert accounts.sign_in(store, "ann", "correct horse")["name"] == "ann"  # the old password stands
