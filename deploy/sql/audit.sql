-- The reaper's audit table, in the database named by the `audit.url` setting.
-- poolwatch creates it itself at start-up when its role may create tables there; with this file an
-- administrator creates it instead, and poolwatch needs only INSERT and SELECT.
-- Run as the database owner: psql -d <audit database> -f deploy/sql/audit.sql
-- (poolwatch.reaper.audit.schema_sql holds the same statements; tests check they agree.)

BEGIN;

CREATE TABLE poolwatch_audit (
    id bigserial PRIMARY KEY,
    record_id uuid NOT NULL UNIQUE,
    target text NOT NULL,
    kind text NOT NULL,
    pid bigint NOT NULL,
    username text,
    database text,
    application text,
    client_addr text,
    state text,
    idle_seconds double precision NOT NULL,
    query text,
    backend_start timestamptz,
    reason text NOT NULL,
    mode text NOT NULL,
    decided_at timestamptz NOT NULL,
    replica text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX poolwatch_audit_decided_at ON poolwatch_audit (decided_at DESC);
CREATE TABLE poolwatch_audit_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO poolwatch_audit_schema (version) VALUES (1);

-- Append and read; never UPDATE or DELETE: the trail is not poolwatch's to rewrite.
GRANT SELECT, INSERT ON poolwatch_audit TO poolwatch;
GRANT USAGE ON SEQUENCE poolwatch_audit_id_seq TO poolwatch;
GRANT SELECT ON poolwatch_audit_schema TO poolwatch;

COMMIT;
