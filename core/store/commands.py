"""The store's commands for `python -m core`: `db upgrade|status|verify`, `users add|list|set`, `reviews export`.

Run on the machine itself, so their audit rows name the user "system". Passwords are prompted
(getpass: not echoed, not in the shell history or the process list), never taken as arguments.
"""

from __future__ import annotations

import getpass


def _open():
    from core.store.audit import Store

    return Store.open()


def _absent(url: str) -> bool:
    """Whether the SQLite file `url` names is not there (a read-only command creates nothing); a StoreError if
    an earlier deployment's files beside it show that it is missing, not yet made (db.refuse_missing)."""
    from core.store.db import refuse_missing, sqlite_file

    if (path := sqlite_file(url)) is not None and not path.exists():
        refuse_missing(path)
        return True
    return False


def _read_only():
    """The store of a command that only reads (db verify, users list): the database opened read-only
    (db.make_engine's read_only: the file left as it is, a write-protected copy readable), at this version's
    schema; UserInputError if there is none yet or its schema is another."""
    from core.errors import UserInputError
    from core.store.audit import Store
    from core.store.db import current_revision, database_url, make_engine, revisions, safe_url

    url, (_, head) = database_url(), revisions()
    if _absent(url):
        raise UserInputError(f"{safe_url(url)}: no database yet, nothing to read")
    engine = make_engine(url, read_only=True)
    if (current := current_revision(engine)) != head:
        raise UserInputError(f"{safe_url(url)}: schema {current or 'empty'}, not this version's {head}: "
                             "run `python -m core db upgrade` first (it chains the rows already there)")
    return Store(engine)


def _db_upgrade(args) -> int:
    """Migrate, then recreate the append-only triggers someone dropped, disabled or altered."""
    from core.store.db import current_revision, database_url, make_engine, restore_triggers, safe_url, upgrade

    engine = make_engine(new_database=True)  # the deliberate way to start a new one (db.refuse_missing)
    before = current_revision(engine)
    head = upgrade(engine)
    print(f"{safe_url(database_url())}: schema {before or 'empty'} -> {head}" if before != head
          else f"{safe_url(database_url())}: schema {head}, up to date")
    if restored := restore_triggers(engine):
        print(f"recreated the audit trail's append-only triggers: {', '.join(restored)} (they were missing, "
              "disabled or altered: `python -m core db verify` checks the rows too)")
    return 0


def _db_status(args) -> int:
    """Read-only: an SQLite file that is not there is reported, not created (nor its folder)."""
    from core.store.audit import verify_trail
    from core.store.db import current_revision, database_url, make_engine, revisions, safe_url

    url, (_, head) = database_url(), revisions()
    if _absent(url):
        print(f"{safe_url(url)}: no database yet (this version's newest schema: {head}); "
              "`python -m core db upgrade` or the app's first start creates it")
        return 0
    engine = make_engine(url, read_only=True)
    current = current_revision(engine)
    print(f"{safe_url(url)}: schema {current or 'empty'} (this version's newest: {head})")
    if current == head:
        verdict = verify_trail(engine)
        print(f"audit trail ({verdict.rows} rows): " + ("; ".join(verdict.problems()) or "hash chain intact, "
                                                         "append-only triggers in place"))
    return 0


def _db_verify(args) -> int:
    """Read-only: recompute the hash chain, check the triggers; 1 if anything is wrong."""
    from core.store.audit import verify_trail
    from core.store.db import database_url, safe_url

    url, expect = database_url(), _noted_head(args.expect) if args.expect else None
    verdict = verify_trail(_read_only().engine, expect)
    for problem in verdict.problems():
        print(f"BROKEN: {problem}")
    print(f"{safe_url(url)}: {verdict.rows} audit rows; " + ("hash chain intact, append-only triggers in place"
                                                            if verdict.ok else "NOT intact (see above)"))
    if verdict.head_sha256:
        print(f"head: {verdict.head_id}:{verdict.head_sha256}\n(note it down away from this database: "
              f"`db verify --expect {verdict.head_id}:{verdict.head_sha256}` later also detects newer rows "
              "removed or the chain rewritten, which the chain alone cannot)")
    return 0 if verdict.ok else 1


def _noted_head(text: str) -> tuple[int, str]:
    from core.errors import UserInputError

    number, _, digest = text.partition(":")
    if not number.isdigit() or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise UserInputError(f"--expect wants ID:SHA256 as `db verify` printed it (head: ...), not {text!r}")
    return int(number), digest


def _new_password(name: str) -> str:
    password = getpass.getpass(f"Password for {name}: ")
    if getpass.getpass("Repeat it: ") != password:
        from core.errors import UserInputError

        raise UserInputError("the two passwords differ; nothing was changed")
    return password


def _users_add(args) -> int:
    from core.store.accounts import add_account
    from core.store.names import shown

    password = None if args.sso_only else _new_password(shown(args.name))
    name = add_account(_open(), args.name, password, args.role)
    print(f"created {args.role} account {shown(name, quoted=True)}" + (" (single sign-on only)" if args.sso_only else ""))
    return 0


def _users_list(args) -> int:
    """One line per account; a name with a tab, a line break, an escape code or an invisible character
    (possible before names were checked) prints escaped, so it cannot forge another line."""
    from core.store.accounts import list_accounts
    from core.store.names import shown

    for account in list_accounts(_read_only()):
        state = "active" if account["active"] else "disabled"
        print(f"{shown(account['name'])}\t{account['role']}\t{state}\t"
              f"last sign-in {account['last_sign_in'] or 'never'}")
    return 0


def _users_set(args) -> int:
    from core.store.accounts import SYSTEM, change_account
    from core.store.names import shown

    active = True if args.enable else False if args.disable else None
    name = change_account(_open(), args.name, SYSTEM, role=args.role, active=active,
                          password=_new_password(shown(args.name)) if args.password else None)
    print(f"updated account {shown(name, quoted=True)}")
    return 0


def _reviews_export(args) -> int:
    from core.store.review_export import export_training_folder

    summary = export_training_folder(_open(), args.out, assume_magnification=args.assume_magnification)
    skipped = summary["skipped"]
    print(f"wrote {summary['written']} reviewed images to {summary['folder']} (private to this user; audit row "
          f"#{summary['audit_id']}) (skipped: {skipped['discordant']} discordant, whose reviewers disagree "
          f"(not settled; provenance.csv lists them), {skipped['not kept']} not kept, {skipped['no subtype']} "
          f"without a subtype a reviewer assessed, {skipped['no magnification']} whose magnification was never stated"
          + ("" if args.assume_magnification else " (--assume-magnification includes them)")
          + f", {skipped['superseded']} older reviews of an exported image with other labels, {skipped['repeated']} "
          f"with the same labels; each image once, as its newest review says); train with --reviewed-dir "
          f"{summary['folder']}")
    if untrusted := skipped["fail the audit chain"]:
        print(f"skipped {untrusted} audit row{'s' if untrusted != 1 else ''} of results or reviews that fail the audit "
              "trail's hash chain (written around the app, or changed since): an administrator should run "
              "`python -m core db verify`")
    return 0


def add_store_commands(commands) -> None:
    """Add `db` and `users` to the CLI's sub-parsers."""
    from core.data.labels import MAGNIFICATIONS
    from core.store.roles import ROLES

    db = commands.add_parser("db", help="the database: upgrade its schema, show its state")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_commands.add_parser("upgrade", help="create or migrate the database to this version's schema") \
        .set_defaults(handler=_db_upgrade)
    db_commands.add_parser("status", help="which database, which schema revision, is the audit trail intact") \
        .set_defaults(handler=_db_status)
    verify = db_commands.add_parser("verify", help="check the audit trail's hash chain and append-only triggers "
                                                   "(exit 1 if broken); prints the head hash to note down")
    verify.set_defaults(handler=_db_verify)
    verify.add_argument("--expect", metavar="ID:SHA256", help="a head printed by an earlier verify: that row must "
                                                              "still be there with that hash")

    users = commands.add_parser("users", help="local accounts: add, list, change (passwords are prompted)")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="USERS_COMMAND")
    add = user_commands.add_parser("add", help="create an account; the password is prompted twice")
    add.set_defaults(handler=_users_add)
    add.add_argument("name", help="the sign-in name (an e-mail address for --sso-only)")
    add.add_argument("--role", choices=ROLES, default="pathologist",
                     help="what the account may do (default: pathologist)")
    add.add_argument("--sso-only", action="store_true", help="no password: signs in by single sign-on only")
    user_commands.add_parser("list", help="accounts, roles and last sign-in").set_defaults(handler=_users_list)
    change = user_commands.add_parser("set", help="change an account's role, state or password")
    change.set_defaults(handler=_users_set)
    change.add_argument("name", help="the account's sign-in name")
    change.add_argument("--role", choices=ROLES, help="the account's new role")
    state = change.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true", help="let a disabled account sign in again")
    state.add_argument("--disable", action="store_true", help="refuse its sign-ins and end its open sessions")
    change.add_argument("--password", action="store_true", help="prompt for a new password (also lifts a lock)")

    reviewed = commands.add_parser("reviews", help="pathologists' reviews: export the reviewed kept images")
    review_commands = reviewed.add_subparsers(dest="reviews_command", required=True, metavar="REVIEWS_COMMAND")
    export = review_commands.add_parser("export", help="reviewed images (BREAKHIS_KEEP_IMAGES) as a training folder")
    export.set_defaults(handler=_reviews_export)
    export.add_argument("out", help="a new, empty folder")
    export.add_argument("--assume-magnification", choices=MAGNIFICATIONS,
                        help="export images whose magnification was never stated as this one (provenance.csv says "
                             "so); default: skip them")
