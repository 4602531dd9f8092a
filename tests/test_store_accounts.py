"""Account names and passwords that must be refused (QA review 7 and 8), on both databases."""

import getpass
import re

import pytest
from argon2 import PasswordHasher

from core.cli import main
from core.store import accounts
from core.store.models import User


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


def legacy_account(store, name: str, password: str = "correct horse") -> None:
    """An account stored before names were checked and normalised (straight into the table)."""
    with store.transaction("test") as session:
        session.add(User(name=name, role="pathologist", active=True, failed_sign_ins=0,
                         password_hash=PasswordHasher().hash(password)))


@pytest.mark.parametrize("name, why", [
    ("Admin", "'admin' already exists"), ("ＡＤＭＩＮ", "'admin' already exists"),  # case, full width
    ("admin\u200b", "U+200B ZERO WIDTH SPACE"), ("\u3164admin", "U+3164 HANGUL FILLER"),
    ("ad\u202emin", "U+202E RIGHT-TO-LEFT OVERRIDE"), ("a\tb", "U+0009 CONTROL"), ("evil\nadmin", "U+000A"),
    ("esc\x1b[31mred", "U+001B"), ("a\u00a0b", "U+00A0 NO-BREAK SPACE"), ("System", "not 'system'")])
def test_a_name_that_reads_as_another_or_hides_characters_is_refused(store, name, why):
    """`users add` accepted "Admin" beside "admin", a zero-width space, tabs, line breaks and escape
    codes (only the length, outer spaces and "system" were checked): look-alike accounts in the trail."""
    accounts.add_account(store, "admin", "correct horse", "admin")
    with pytest.raises(ValueError, match=re.escape(why)) as refusal:
        accounts.add_account(store, name, "correct horse", "pathologist")
    assert "\t" not in str(refusal.value) and "\n" not in str(refusal.value) and "\x1b" not in str(refusal.value)
    assert [a["name"] for a in accounts.list_accounts(store)] == ["admin"]
    accounts.add_account(store, "Dr José Müller", "correct horse", "pathologist")  # a plain inner space is fine


def test_a_name_is_stored_in_nfc_and_either_form_signs_in(store):
    """"José" typed precomposed (NFC) and decomposed (NFD) made two accounts that look the same."""
    nfd, nfc = "Jose\u0301", "Jos\u00e9"
    assert accounts.add_account(store, nfd, "correct horse", "pathologist") == nfc
    with pytest.raises(ValueError, match="already exists"):
        accounts.add_account(store, nfc, "correct horse", "pathologist")
    assert [a["name"] for a in accounts.list_accounts(store)] == [nfc]
    for typed in (nfc, nfd):
        assert accounts.sign_in(store, typed, "correct horse") == {"name": nfc, "role": "pathologist"}
    with pytest.raises(accounts.SignInError):  # sign-in is exact but for the Unicode form: never by case
        accounts.sign_in(store, "jos\u00e9", "correct horse")
    assert accounts.change_account(store, nfd, accounts.SYSTEM, role="admin") == nfc
    assert {e["user"] for e in store.events(kinds=["sign_in", "account"])} == {nfc, accounts.SYSTEM}


def test_names_stored_before_the_checks_still_sign_in(store):
    """Normalising at sign-in must not lock out accounts stored in another form or with odd characters."""
    for name in ("Zoe\u0308", "admin\u200b", "Admin"):
        legacy_account(store, name)
    assert accounts.sign_in(store, "Zo\u00eb", "correct horse")["name"] == "Zoe\u0308"  # NFC typed, NFD stored
    assert accounts.sign_in(store, "admin\u200b", "correct horse")["name"] == "admin\u200b"
    assert accounts.sign_in(store, "Admin", "correct horse")["name"] == "Admin"
    accounts.change_account(store, "admin\u200b", accounts.SYSTEM, password="a new password")  # no name check
    assert accounts.sign_in(store, "admin\u200b", "a new password")["name"] == "admin\u200b"


def test_users_list_escapes_names_that_would_forge_lines_or_colour_the_terminal(store, store_url, monkeypatch,
                                                                              capsys):
    """A name with tabs and a line break printed a forged `users list` line; ESC reached the terminal."""
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", store_url)
    accounts.add_account(store, "admin", "correct horse", "admin")
    legacy_account(store, "evil\nadmin\tadmin\tactive\tlast sign-in never")
    legacy_account(store, "esc\x1b[31mred\x1b[0m")
    legacy_account(store, "back\\slash")
    legacy_account(store, "admin\u200b")
    assert main(["users", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "\x1b" not in "".join(lines) and "\u200b" not in "".join(lines)
    assert sorted(line.split("\t")[0] for line in lines) == [  # the order is the database's collation
        "'admin\\u200b'", "'back\\\\slash'", "'esc\\x1b[31mred\\x1b[0m'",
        "'evil\\nadmin\\tadmin\\tactive\\tlast sign-in never'", "admin"]
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "correct horse")
    assert main(["users", "add", "admin\u200b"]) == 2  # and a refused name is named escaped
    assert "'admin\\u200b'" in capsys.readouterr().err
