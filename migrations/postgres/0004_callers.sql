-- Tenants, callers (modules) and grants. Providers belong to a tenant, or to none (global:
-- shared by every tenant). Every provider from before tenants lands in tenant 'default'.

CREATE TABLE tenants (
    name       TEXT        NOT NULL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL
);

INSERT INTO tenants (name, created_at) VALUES ('default', now());

-- NULL: a global provider. (SQLite adds a referencing column only with a NULL default.)
ALTER TABLE providers ADD COLUMN tenant TEXT REFERENCES tenants (name);
UPDATE providers SET tenant = 'default';

-- Hosts are unique per scope: a tenant's name, or '*' for global providers. Two tenants may
-- claim the same host; a tenant's own provider wins over a global one for its callers.
ALTER TABLE provider_hosts ADD COLUMN scope TEXT NOT NULL DEFAULT 'default';
ALTER TABLE provider_hosts ALTER COLUMN scope DROP DEFAULT;
ALTER TABLE provider_hosts DROP CONSTRAINT provider_hosts_pkey;
ALTER TABLE provider_hosts ADD PRIMARY KEY (scope, host);

-- Callers: the token only as SHA-256 hex (shown once, when issued). A revoked caller stays (the
-- audit trail and DLQ entries name it) but authenticates nothing.
CREATE TABLE callers (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name         TEXT        NOT NULL UNIQUE,
    tenant       TEXT        NOT NULL REFERENCES tenants (name),
    -- JSON array of group names.
    groups       TEXT        NOT NULL,
    token_hash   TEXT        UNIQUE,
    sa_namespace TEXT,
    sa_name      TEXT,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    CHECK ((sa_namespace IS NULL) = (sa_name IS NULL))
);

CREATE UNIQUE INDEX callers_service_account ON callers (sa_namespace, sa_name)
    WHERE sa_namespace IS NOT NULL;

-- Grants: (caller or group) x provider x methods x paths, with optional limits of their own.
CREATE TABLE grants (
    id                 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tenant             TEXT        NOT NULL REFERENCES tenants (name),
    caller_id          TEXT COLLATE "C" REFERENCES callers (id) ON DELETE CASCADE,
    caller_group       TEXT,
    provider_id        TEXT COLLATE "C" NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    -- JSON arrays: methods (["*"] for any) and path patterns.
    methods            TEXT        NOT NULL,
    paths              TEXT        NOT NULL,
    rate_limit_per_sec BIGINT,
    burst              BIGINT,
    daily_quota        BIGINT,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    CHECK ((caller_id IS NULL) <> (caller_group IS NULL))
);

CREATE INDEX grants_provider ON grants (provider_id);
CREATE INDEX grants_caller ON grants (caller_id);
