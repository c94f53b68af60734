-- The admin API's API tokens and audit trail.

-- Tokens are stored as the SHA-256 (hex) of a 256-bit random string; the token itself is shown
-- once, when it is created. Revoked tokens stay (the audit trail names them) but authenticate
-- nothing.
CREATE TABLE api_tokens (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash TEXT NOT NULL UNIQUE,
    -- 'bootstrap' or the creating token's id.
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
) STRICT;

-- Every change made through the API: who (token id or 'bootstrap'), what, to which target,
-- when. Never a secret: detail names fields, not their values. AUTOINCREMENT: ids only grow,
-- so "newest first" pages by id.
CREATE TABLE audit_log (
    id        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at        TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target_id TEXT,
    -- A JSON object.
    detail    TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_log_target ON audit_log (target_id, id);
