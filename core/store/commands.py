"""The store's commands for `python -m core`: `db upgrade|status`, `users add|list|set`, `reviews export`.

Run on the machine itself, so their audit rows name the user "system". Passwords are prompted
(getpass: not echoed, not in the shell history or the process list), never taken as arguments.
"""

from __future__ import annotations

import getpass


def _open():
    from core.store.audit import Store

    return Store.open()


def _db_upgrade(args) -> int:
    from core.store.db import current_revision, database_url, make_engine, safe_url, upgrade

    engine = make_engine()
    before = current_revision(engine)
    head = upgrade(engine)
    print(f"{safe_url(database_url())}: schema {before or 'empty'} -> {head}" if before != head
          else f"{safe_url(database_url())}: schema {head}, up to date")
    return 0


def _db_status(args) -> int:
    """Read-only: an SQLite file that is not there is reported, not created (nor its folder)."""
    from core.store.db import current_revision, database_url, make_engine, revisions, safe_url, sqlite_file

    url, (_, head) = database_url(), revisions()
    path = sqlite_file(url)
    if path is not None and not path.exists():
        print(f"{safe_url(url)}: no database yet (this version's newest schema: {head}); "
              "`python -m core db upgrade` or the app's first start creates it")
        return 0
    current = current_revision(make_engine(url))
    print(f"{safe_url(url)}: schema {current or 'empty'} (this version's newest: {head})")
    return 0


def _new_password(name: str) -> str:
    password = getpass.getpass(f"Password for {name}: ")
    if getpass.getpass("Repeat it: ") != password:
        from core.errors import UserInputError

        raise UserInputError("the two passwords differ; nothing was changed")
    return password


def _users_add(args) -> int:
    from core.store.accounts import add_account

    password = None if args.sso_only else _new_password(args.name)
    add_account(_open(), args.name, password, args.role)
    print(f"created {args.role} account {args.name!r}" + (" (single sign-on only)" if args.sso_only else ""))
    return 0


def _users_list(args) -> int:
    from core.store.accounts import list_accounts

    for account in list_accounts(_open()):
        state = "active" if account["active"] else "disabled"
        print(f"{account['name']}\t{account['role']}\t{state}\t"
              f"last sign-in {account['last_sign_in'] or 'never'}")
    return 0


def _users_set(args) -> int:
    from core.store.accounts import SYSTEM, change_account

    active = True if args.enable else False if args.disable else None
    change_account(_open(), args.name, SYSTEM, role=args.role, active=active,
                   password=_new_password(args.name) if args.password else None)
    print(f"updated account {args.name!r}")
    return 0


def _reviews_export(args) -> int:
    from core.store.reviews import export_training_folder

    summary = export_training_folder(_open(), args.out)
    skipped = summary["skipped"]
    print(f"wrote {summary['written']} reviewed images to {summary['folder']} (skipped: "
          f"{skipped['not kept']} not kept, {skipped['no subtype']} without a subtype, {skipped['superseded']} older "
          f"reviews of an exported image with other labels, {skipped['repeated']} with the same labels; each image "
          f"once, as its newest review says); train with --reviewed-dir {summary['folder']}")
    return 0


def add_store_commands(commands) -> None:
    """Add `db` and `users` to the CLI's sub-parsers."""
    from core.store.roles import ROLES

    db = commands.add_parser("db", help="the database: upgrade its schema, show its state")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_commands.add_parser("upgrade", help="create or migrate the database to this version's schema") \
        .set_defaults(handler=_db_upgrade)
    db_commands.add_parser("status", help="which database, which schema revision").set_defaults(handler=_db_status)

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
