-- The dead-letter queue, asynchronous jobs, and the work queue that feeds their worker.
--
-- Times are INTEGER milliseconds since the Unix epoch (UTC): the hub's clock (injectable in tests),
-- not the database's, decides what is due and what has expired, and every comparison is a plain
-- integer one on both backends. Ids are ULID text. Bodies are vault-sealed
-- (nonce || ciphertext || tag, key id beside): the database never holds one in clear.

CREATE TABLE dlq_entries (
    -- The id the caller was told in X-Hub-DLQ-Id.
    id              TEXT    NOT NULL PRIMARY KEY,
    provider_id     TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    method          TEXT    NOT NULL,
    -- Path and query as the caller sent them, auth query values redacted.
    path            TEXT    NOT NULL,
    -- JSON [[name, value], ...]: the caller's headers minus credentials and hop-by-hop.
    headers         TEXT    NOT NULL,
    body            BLOB,
    body_key_id     TEXT,
    -- Plaintext bytes kept; body_truncated = 1: cut at dlq.max_body_bytes, not replayable.
    body_size       INTEGER NOT NULL,
    body_truncated  INTEGER NOT NULL,
    idempotency_key TEXT,
    request_id      TEXT    NOT NULL,
    caller          TEXT,
    -- The async job this entry records the failure of.
    job_id          TEXT,
    attempts        INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT    NOT NULL,
    stop_reason     TEXT    NOT NULL,
    excerpt         TEXT    NOT NULL,
    -- pending: failed, waiting for an operator; queued: a replay is in the work queue;
    -- resolved: a replay succeeded (kept until expires_at, with its outcome).
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'queued', 'resolved')),
    replays         INTEGER NOT NULL DEFAULT 0,
    replay_status   INTEGER,
    replay_error    TEXT,
    replay_excerpt  TEXT,
    replayed_at     INTEGER,
    -- While a worker replays it; a crashed worker's lease simply expires.
    lease_until     INTEGER,
    -- When a queued replay is due (the sweeper re-queues overdue ones).
    due_at          INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    CHECK ((body IS NULL) = (body_key_id IS NULL))
) STRICT;

CREATE INDEX dlq_entries_provider ON dlq_entries (provider_id, id);
CREATE INDEX dlq_entries_status ON dlq_entries (status, id);
CREATE INDEX dlq_entries_expires ON dlq_entries (expires_at);

CREATE TABLE jobs (
    id                TEXT    NOT NULL PRIMARY KEY,
    provider_id       TEXT    NOT NULL,
    provider          TEXT    NOT NULL,
    method            TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    headers           TEXT    NOT NULL,
    body              BLOB,
    body_key_id       TEXT,
    -- The caller's key, or one generated at submission: every attempt sends the same one.
    idempotency_key   TEXT    NOT NULL,
    request_id        TEXT    NOT NULL,
    callback_url      TEXT,
    status            TEXT    NOT NULL
        CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    due_at            INTEGER NOT NULL,
    lease_until       INTEGER,
    last_error        TEXT,
    result_status     INTEGER,
    result_headers    TEXT,
    result_body       BLOB,
    result_key_id     TEXT,
    result_truncated  INTEGER NOT NULL DEFAULT 0,
    dlq_id            TEXT,
    callback_status   TEXT CHECK (callback_status IN ('pending', 'delivered', 'failed')),
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_due_at   INTEGER,
    callback_error    TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    CHECK ((body IS NULL) = (body_key_id IS NULL)),
    CHECK ((result_body IS NULL) = (result_key_id IS NULL))
) STRICT;

-- The same idempotency key twice (per provider) is the same job.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (provider_id, idempotency_key);
CREATE INDEX jobs_active ON jobs (status, due_at);
CREATE INDEX jobs_finished ON jobs (finished_at);

-- The default work queue. A claimed row's available_at is pushed to the end of its lease, so
-- "due" and "lease expired" are one condition; deliveries fences acks from expired leases.
CREATE TABLE work_queue (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL CHECK (kind IN ('replay', 'job', 'callback')),
    ref_id       TEXT    NOT NULL,
    available_at INTEGER NOT NULL,
    lease_owner  TEXT,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    UNIQUE (kind, ref_id)
) STRICT;

CREATE INDEX work_queue_due ON work_queue (available_at, id);
