-- Providers, their claimed hosts, and the registry revision the proxy polls.
-- Timestamps are RFC 3339 text (sqlx's chrono encoding); ids are ULID text, which sorts by time.

CREATE TABLE providers (
    id                     TEXT    NOT NULL PRIMARY KEY,
    name                   TEXT    NOT NULL,
    -- JSON array of host pattern strings, in the order the caller gave them.
    hosts                  TEXT    NOT NULL,
    base_url               TEXT    NOT NULL,
    auth_type              TEXT    NOT NULL
        CHECK (auth_type IN ('none', 'bearer', 'basic', 'header', 'query')),
    -- Vault-sealed bytes; the store never sees plaintext.
    credentials            BLOB,
    credentials_key_id     TEXT,
    credentials_updated_at TEXT,
    -- ProviderConfig as JSON.
    config                 TEXT    NOT NULL,
    status                 TEXT    NOT NULL CHECK (status IN ('active', 'disabled')),
    version                INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at             TEXT    NOT NULL,
    updated_at             TEXT    NOT NULL,
    deleted_at             TEXT,
    CHECK ((credentials IS NULL) = (credentials_key_id IS NULL))
) STRICT;

-- A name is unique among live providers; a deleted provider's name is free again.
CREATE UNIQUE INDEX providers_live_name ON providers (name) WHERE deleted_at IS NULL;

-- One row per host a live provider claims: the primary key makes the database enforce that no
-- two live providers claim the same host pattern. Soft delete removes the rows.
CREATE TABLE provider_hosts (
    host        TEXT NOT NULL PRIMARY KEY,
    provider_id TEXT NOT NULL REFERENCES providers (id) ON DELETE CASCADE
) STRICT;

CREATE INDEX provider_hosts_provider ON provider_hosts (provider_id);

-- Exactly one row. registry_revision moves on every provider write, in the same transaction.
CREATE TABLE hub_meta (
    id                INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    registry_revision INTEGER NOT NULL
) STRICT;

INSERT INTO hub_meta (id, registry_revision) VALUES (1, 0);
