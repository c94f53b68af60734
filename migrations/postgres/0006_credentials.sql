-- Credentials beyond static strings (OAuth2 grants, request signing, placements).
--
-- 1. The auth type's CHECK goes: the application validates it (AuthType::parse; an unknown
--    stored type fails loudly on read), so a new kind needs no migration.
-- 2. The refresh tokens providers rotate, sealed by the vault (AAD names provider and
--    version): a refresh uses the newest stored one; a provider version change (new
--    credentials) makes the row stale.
ALTER TABLE providers DROP CONSTRAINT IF EXISTS providers_auth_type_check;

CREATE TABLE oauth_refresh_tokens (
    provider_id      TEXT COLLATE "C" NOT NULL PRIMARY KEY
        REFERENCES providers (id) ON DELETE CASCADE,
    provider_version BIGINT      NOT NULL,
    key_id           TEXT        NOT NULL,
    ciphertext       BYTEA       NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
