-- Credentials beyond static strings (OAuth2 grants, request signing, placements).
--
-- 1. The auth type's CHECK goes: the application validates it (AuthType::parse; an unknown
--    stored type fails loudly on read), so a new kind needs no migration. SQLite cannot drop a
--    CHECK, and rebuilding `providers` is not possible here: sqlx runs every SQLite migration in
--    a transaction, where foreign keys cannot be switched off, so dropping the old table would
--    cascade-delete provider_hosts and grants. Removing a CHECK changes nothing on disk, so the
--    table's definition is edited in place, SQLite's documented procedure for such changes
--    (https://www.sqlite.org/lang_altertable.html#otheralter); RESET reloads the schema on
--    this connection and the DDL below moves the schema cookie for the others.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (auth_type IN (''none'', ''bearer'', ''basic'', ''header'', ''query''))', '')
WHERE type = 'table' AND name = 'providers';
PRAGMA writable_schema = RESET;

-- 2. The refresh tokens providers rotate, sealed by the vault (AAD names provider and
--    version): a refresh uses the newest stored one; a provider version change (new
--    credentials) makes the row stale.
CREATE TABLE oauth_refresh_tokens (
    provider_id      TEXT    NOT NULL PRIMARY KEY REFERENCES providers (id) ON DELETE CASCADE,
    provider_version INTEGER NOT NULL,
    key_id           TEXT    NOT NULL,
    ciphertext       BLOB    NOT NULL,
    updated_at       TEXT    NOT NULL
) STRICT;
