-- Tenants, callers (modules) and grants. Providers belong to a tenant, or to none (global:
-- shared by every tenant). Every provider from before tenants lands in tenant 'default'.

CREATE TABLE tenants (
    name       TEXT NOT NULL PRIMARY KEY,
    created_at TEXT NOT NULL
) STRICT;

INSERT INTO tenants (name, created_at) VALUES ('default', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

-- NULL: a global provider. (SQLite adds a referencing column only with a NULL default.)
ALTER TABLE providers ADD COLUMN tenant TEXT REFERENCES tenants (name);
UPDATE providers SET tenant = 'default';

-- Hosts are unique per scope: a tenant's name, or '*' for global providers. Two tenants may
-- claim the same host; a tenant's own provider wins over a global one for its callers.
CREATE TABLE provider_hosts_scoped (
    scope       TEXT NOT NULL,
    host        TEXT NOT NULL,
    provider_id TEXT NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    PRIMARY KEY (scope, host)
) STRICT;
INSERT INTO provider_hosts_scoped (scope, host, provider_id)
    SELECT 'default', host, provider_id FROM provider_hosts;
DROP TABLE provider_hosts;
ALTER TABLE provider_hosts_scoped RENAME TO provider_hosts;
CREATE INDEX provider_hosts_provider ON provider_hosts (provider_id);

-- Callers: the token only as SHA-256 hex (shown once, when issued). A revoked caller stays (the
-- audit trail and DLQ entries name it) but authenticates nothing.
CREATE TABLE callers (
    id           TEXT NOT NULL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    tenant       TEXT NOT NULL REFERENCES tenants (name),
    -- JSON array of group names.
    groups       TEXT NOT NULL,
    token_hash   TEXT UNIQUE,
    sa_namespace TEXT,
    sa_name      TEXT,
    expires_at   TEXT,
    revoked_at   TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    CHECK ((sa_namespace IS NULL) = (sa_name IS NULL))
) STRICT;

CREATE UNIQUE INDEX callers_service_account ON callers (sa_namespace, sa_name)
    WHERE sa_namespace IS NOT NULL;

-- Grants: (caller or group) x provider x methods x paths, with optional limits of their own.
CREATE TABLE grants (
    id                 TEXT    NOT NULL PRIMARY KEY,
    tenant             TEXT    NOT NULL REFERENCES tenants (name),
    caller_id          TEXT    REFERENCES callers (id) ON DELETE CASCADE,
    caller_group       TEXT,
    provider_id        TEXT    NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    -- JSON arrays: methods (["*"] for any) and path patterns.
    methods            TEXT    NOT NULL,
    paths              TEXT    NOT NULL,
    rate_limit_per_sec INTEGER,
    burst              INTEGER,
    daily_quota        INTEGER,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    CHECK ((caller_id IS NULL) <> (caller_group IS NULL))
) STRICT;

CREATE INDEX grants_provider ON grants (provider_id);
CREATE INDEX grants_caller ON grants (caller_id);
