"""core.store: the database behind sign-in, the audit trail and the pathologists' reviews.

    db        which database (SQLite under BREAKHIS_DATA_DIR, or BREAKHIS_DATABASE_URL), its
              settings, the Alembic migrations, and clear refusals (damaged, read-only, newer)
    models    the tables (SQLAlchemy 2): users, sign-in sessions, and the append-only audit trail
    audit     Store: open + migrate, append an audit row, read the trail back (filters, CSV)
    chain     the audit trail's hash chain (each row's SHA-256 over the previous one's) and its check,
              `python -m core db verify`: edits and deletions inside the trail are found
    accounts  argon2 passwords, the lock after repeated failures
    roles     the roles and what each may do
    sessions  sign-ins a reload resumes: signed, expiring tokens (PyJWT) bound to revocable rows
    reviews   agree/correct a result, the review queue, a case's history (repeats: one image's rows folded)
    review_export  reviewed, kept images as a training folder (private, audited)
    images    the content-addressed image store (only when BREAKHIS_KEEP_IMAGES is set)
    commands  `python -m core db ...`, `users ...`, `reviews export`

The app, the CLI (`python -m core db upgrade` / `verify`, `users add`) and the tests all open
the database through `core.store.audit.Store.open()`, so they see the same schema. Nothing here
imports Streamlit or TensorFlow; the store sits below core.app and above the model layers. Thin on
purpose, like the other packages: import the module you need.
"""
