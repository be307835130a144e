"""What the registry does, on one database transaction: namespaces, repositories, immutable
versions, tags, previews, blobs' facts and visibility. Routes translate HTTP to these calls.

- :mod:`.access` — the name grammar, namespace and repository lookups, who may read or change
  what, blob visibility, the audit log;
- :mod:`.concepts` — blobs' facts, publishing, tags, yanks, repository settings, previews,
  deletion, resolution;
- :mod:`.accounts` — users, organizations, members, tokens, signing keys, policy.

Visibility rule, applied everywhere: a private repository that the caller may not read is
answered exactly like one that does not exist (404 NOT_FOUND); so is a blob that is neither
referenced by a version the caller may read nor uploaded by the caller.

Input rule: every name is checked against its grammar before any SQL is sent — a name that cannot
exist is answered as absent (404) by lookups and refused (400 NAME_INVALID) by creations, the
same on every database.

Concurrency rule: a write that depends on a repository's state (publish, tags, yanks, previews,
updates, deletion) first locks the repository's row (``SELECT … FOR UPDATE`` on PostgreSQL; on
SQLite a writing transaction holds the database's write lock from its start), so that writers of
one repository run one after another and every check they make (a version exists, fewer than
:data:`MAX_PREVIEWS` previews, a tag is not protected) stays true until they commit. Rows that
concurrent requests may create alike (repositories, blobs, uploads, memberships, tags, keys) are
inserted with ``ON CONFLICT``, never by catching a failed insert. Counts of what an account holds
(live tokens, signing keys) are taken under a lock of the account's row. Locks are taken in one
order — the minting token's row, then an account's or one repository's row — and a transaction
holds at most one repository row, so these locks cannot deadlock;
:func:`pfx_registry.state.run_write` retries any other conflict the database reports.
"""
