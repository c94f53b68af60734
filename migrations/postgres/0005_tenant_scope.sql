-- Tenant scope: API tokens may be limited to one tenant, and DLQ entries and jobs record the
-- tenant of the call (the provider's; NULL for a call to a global provider whose caller's
-- tenant was not known), so scoped tokens see only their tenant's.

-- NULL: the token acts on every tenant. (SQLite adds a referencing column only with a NULL
-- default.)
ALTER TABLE api_tokens ADD COLUMN tenant TEXT REFERENCES tenants (name);

ALTER TABLE dlq_entries ADD COLUMN tenant TEXT;
ALTER TABLE jobs ADD COLUMN tenant TEXT;

-- The listings filtered by tenant or caller, newest first.
CREATE INDEX dlq_entries_tenant ON dlq_entries (tenant, id);
CREATE INDEX dlq_entries_caller ON dlq_entries (caller, id);
CREATE INDEX jobs_tenant ON jobs (tenant, id);
