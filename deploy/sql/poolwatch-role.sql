-- The least-privilege role poolwatch logs in as, on each monitored PostgreSQL server.
-- Run as a superuser (psql -f deploy/sql/poolwatch-role.sql), then set a password:
--   \password poolwatch
-- PostgreSQL 10 or later (pg_monitor, pg_signal_backend).

CREATE ROLE poolwatch LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;

-- pg_monitor: read every session's row in pg_stat_activity (state, query, state_change,
-- backend_start). Without it, other users' rows are hidden: the census counts them as state
-- "unknown" and the reaper never touches them.
GRANT pg_monitor TO poolwatch;

-- pg_signal_backend: pg_terminate_backend() on sessions of other non-superuser roles. Needed only
-- when a reaper is enabled with dry_run: false. It cannot signal superuser sessions, but it CAN
-- signal every other session on the server: which sessions are fair game is decided by poolwatch's
-- reaper policy, not by this grant. Leave it out to make enforcement impossible.
GRANT pg_signal_backend TO poolwatch;
