-- The admin API's API tokens and audit trail.

-- Tokens are stored as the SHA-256 (hex) of a 256-bit random string; the token itself is shown
-- once, when it is created. Revoked tokens stay (the audit trail names them) but authenticate
-- nothing.
CREATE TABLE api_tokens (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name       TEXT        NOT NULL,
    role       TEXT        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash TEXT        NOT NULL UNIQUE,
    -- 'bootstrap' or the creating token's id.
    created_by TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

-- Every change made through the API: who (token id or 'bootstrap'), what, to which target,
-- when. Never a secret: detail names fields, not their values. Identity ids only grow, so
-- "newest first" pages by id.
CREATE TABLE audit_log (
    id        BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    actor     TEXT        NOT NULL,
    action    TEXT        NOT NULL,
    target_id TEXT,
    detail    JSONB       NOT NULL
);

CREATE INDEX audit_log_target ON audit_log (target_id, id);
