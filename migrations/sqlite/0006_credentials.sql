-- no-transaction
-- Credentials beyond static strings (OAuth2 grants, request signing, placements).
--
-- 1. The auth type's CHECK goes: the application validates it (AuthType::parse; an unknown
--    stored type fails loudly on read), so a new kind needs no migration. SQLite cannot drop a
--    CHECK, so `providers` is rebuilt by its documented procedure (foreign keys off around
--    one transaction, so provider_hosts and grants are not cascaded away).
-- 2. The refresh tokens providers rotate, sealed by the vault (AAD names provider and
--    version): a refresh uses the newest stored one; a provider version change (new
--    credentials) makes the row stale.
PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE providers_new (
    id                     TEXT    NOT NULL PRIMARY KEY,
    name                   TEXT    NOT NULL,
    hosts                  TEXT    NOT NULL,
    base_url               TEXT    NOT NULL,
    auth_type              TEXT    NOT NULL,
    credentials            BLOB,
    credentials_key_id     TEXT,
    credentials_updated_at TEXT,
    config                 TEXT    NOT NULL,
    status                 TEXT    NOT NULL CHECK (status IN ('active', 'disabled')),
    version                INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at             TEXT    NOT NULL,
    updated_at             TEXT    NOT NULL,
    deleted_at             TEXT,
    tenant                 TEXT REFERENCES tenants (name),
    CHECK ((credentials IS NULL) = (credentials_key_id IS NULL))
) STRICT;

INSERT INTO providers_new (id, name, hosts, base_url, auth_type, credentials, credentials_key_id,
                           credentials_updated_at, config, status, version, created_at,
                           updated_at, deleted_at, tenant)
SELECT id, name, hosts, base_url, auth_type, credentials, credentials_key_id,
       credentials_updated_at, config, status, version, created_at, updated_at, deleted_at,
       tenant
FROM providers;

DROP TABLE providers;
ALTER TABLE providers_new RENAME TO providers;
CREATE UNIQUE INDEX providers_live_name ON providers (name) WHERE deleted_at IS NULL;

CREATE TABLE oauth_refresh_tokens (
    provider_id      TEXT    NOT NULL PRIMARY KEY REFERENCES providers (id) ON DELETE CASCADE,
    provider_version INTEGER NOT NULL,
    key_id           TEXT    NOT NULL,
    ciphertext       BLOB    NOT NULL,
    updated_at       TEXT    NOT NULL
) STRICT;

COMMIT;
PRAGMA foreign_keys = ON;
