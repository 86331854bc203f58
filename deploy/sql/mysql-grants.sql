-- MySQL 8.0+: the least-privilege account poolwatch logs in as, on each monitored server.
-- (MariaDB: deploy/sql/mariadb-grants.sql. The two files differ only in the spelling of the kill
-- grant, MySQL's CONNECTION_ADMIN against MariaDB's CONNECTION ADMIN: each server rejects the other's.)
-- Run as an administrator (mysql < deploy/sql/mysql-grants.sql), then set a password:
--   ALTER USER 'poolwatch'@'%' IDENTIFIED BY '...';
-- Give the target a URL without a default database (mysql+pymysql://poolwatch@db:3306/): the
-- account needs no rights on the application's schemas.

CREATE USER IF NOT EXISTS 'poolwatch'@'%';

-- PROCESS: see every connection in information_schema.PROCESSLIST and every open transaction in
-- information_schema.INNODB_TRX. This is all the census needs; without it an account sees only its
-- own connections.
GRANT PROCESS ON *.* TO 'poolwatch'@'%';

-- Program names (the program_name connection attribute) of other sessions, where performance_schema
-- is on (MySQL's default). Optional: without it the census counts every session under the empty
-- (folded) application label.
GRANT SELECT ON performance_schema.session_connect_attrs TO 'poolwatch'@'%';

-- The reaper only. Which accounts hold SUPER: a superuser's session is never killed unless
-- allow_superusers is set, and without this grant no session can be judged, so nothing is killed.
-- Two columns of mysql.user only: not the password hashes.
GRANT SELECT (User, Super_priv) ON mysql.user TO 'poolwatch'@'%';

-- The reaper with dry_run: false only: KILL CONNECTION of other accounts' connections. MySQL also
-- refuses to kill a SYSTEM_USER account's connection without SYSTEM_USER: leave that out, such
-- sessions stay safe. Like pg_signal_backend on PostgreSQL, this grant can kill any ordinary
-- connection: which ones are fair game is the reaper policy's decision.
-- Managed servers without it (Amazon RDS for MySQL): leave it out, set
-- reaper.kill_procedure: mysql.rds_kill, and let the account run that procedure (RDS grants it to
-- every user by default).
GRANT CONNECTION_ADMIN ON *.* TO 'poolwatch'@'%';
