"""What `make-default` says and records after an install (core.training.recipes installs): the lines it
prints (what is where now, how to go back) and its audit row. Here, not beside the install, because they
read the app's default-model setting and write to the store, which the training layer never imports."""

from __future__ import annotations

import getpass

from core.app.registry import default_model, short_location
from core.model.folders import card_is_demo
from core.store.accounts import SYSTEM
from core.store.audit import Store
from core.store.db import StoreError, database_url, safe_url
from core.training.recipes import Installed, demo_reason


def install_lines(installed: Installed) -> list[str]:
    """What make-default prints after an install: what is where now, and how to go back."""
    card, folder = installed.card, installed.folder
    lines = [f"Installed {folder}: {card.get('name', '?')} (weights SHA-256 {card.get('sha256', '?')}) "
             f"from {installed.source}"]
    if card_is_demo(card):
        lines.append(f"warning: this is a DEMO model ({demo_reason(card)}), installed because of --allow-demo: its "
                     "figures are not a valid accuracy")
    if installed.backup is not None:
        lines.append(f"The model it replaced ({(installed.previous or {}).get('name', 'unnamed')}) was moved to "
                     f"{installed.backup}, not deleted. To restore it: rm -r {folder} && mv {installed.backup} "
                     f"{folder}")
    if folder.resolve() != default_model().resolve():
        lines.append(f"Note: new sessions start with {default_model()} (BREAKHIS_DEFAULT_MODEL or models/default), "
                     "not with this folder")
    return lines


def record_install(installed: Installed) -> tuple[bool, str]:
    """One `model_activated` audit row for an install (scope "deployment" when it is the folder new sessions
    start with): who (the CLI's user "system" and the OS user), which run, the old and new weights SHA-256.
    (written?, a line saying so): an install the trail could not record is said, never silent."""
    try:
        os_user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        os_user = "unknown"
    previous = installed.previous or {}
    scope = "deployment" if installed.folder.resolve() == default_model().resolve() else "model folder"
    details = {"scope": scope, "via": "make-default", "os_user": os_user, "from_run": str(installed.source),
               "demo": card_is_demo(installed.card), "previous_model": previous.get("name"),
               "previous_sha256": previous.get("sha256"),
               "backup": str(installed.backup) if installed.backup is not None else None}
    try:
        store = Store.open()
        try:
            row = store.record("model_activated", SYSTEM, short_location(str(installed.folder)),
                               model=installed.card.get("name"), model_sha256=installed.card.get("sha256"),
                               details=details)
        finally:
            store.close()
    except StoreError as problem:
        return False, (f"warning: NOT AUDITED: {problem}. This install is not in the audit trail: keep this output "
                       "as its record")
    return True, f"Audit row #{row} (model_activated, scope {scope}) in {safe_url(database_url())}"
