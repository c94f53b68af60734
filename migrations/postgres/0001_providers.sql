-- Providers, their claimed hosts, and the registry revision the proxy polls.
-- Ids are ULID text with the "C" collation so that text order is ULID (creation) order whatever
-- the database's default collation.

CREATE TABLE providers (
    id                     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name                   TEXT        NOT NULL,
    -- JSON array of host pattern strings, in the order the caller gave them.
    hosts                  JSONB       NOT NULL,
    base_url               TEXT        NOT NULL,
    auth_type              TEXT        NOT NULL
        CHECK (auth_type IN ('none', 'bearer', 'basic', 'header', 'query')),
    -- Vault-sealed bytes; the store never sees plaintext.
    credentials            BYTEA,
    credentials_key_id     TEXT,
    credentials_updated_at TIMESTAMPTZ,
    -- ProviderConfig.
    config                 JSONB       NOT NULL,
    status                 TEXT        NOT NULL CHECK (status IN ('active', 'disabled')),
    version                BIGINT      NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL,
    deleted_at             TIMESTAMPTZ,
    CHECK ((credentials IS NULL) = (credentials_key_id IS NULL))
);

-- A name is unique among live providers; a deleted provider's name is free again.
CREATE UNIQUE INDEX providers_live_name ON providers (name) WHERE deleted_at IS NULL;

-- One row per host a live provider claims: the primary key makes the database enforce that no
-- two live providers claim the same host pattern. Soft delete removes the rows.
CREATE TABLE provider_hosts (
    host        TEXT NOT NULL PRIMARY KEY,
    provider_id TEXT COLLATE "C" NOT NULL REFERENCES providers (id) ON DELETE CASCADE
);

CREATE INDEX provider_hosts_provider ON provider_hosts (provider_id);

-- Exactly one row. registry_revision moves on every provider write, in the same transaction;
-- writers also take its row lock first, which serializes provider writes.
CREATE TABLE hub_meta (
    id                SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    registry_revision BIGINT   NOT NULL
);

INSERT INTO hub_meta (id, registry_revision) VALUES (1, 0);
