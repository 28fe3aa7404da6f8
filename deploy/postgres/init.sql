-- docker-compose only (deploy/docker-compose.yml): run once by the postgres image on an empty
-- data volume. One role and one database per service, each service owning its database, as
-- in production (where CloudNativePG creates them, deploy/k8s/base/postgres.yaml).
--
-- DEVELOPMENT PASSWORDS: this file is for a laptop stack whose ports are bound to loopback.
-- Never reuse them; Kubernetes takes its passwords from Secrets (see README).
--
-- The services create their database when it is missing (connecting to the `postgres`
-- database first), so the roles need no CREATEDB: the databases exist before they start.
CREATE ROLE inventory     LOGIN PASSWORD 'inventory-dev';
CREATE ROLE orders        LOGIN PASSWORD 'orders-dev';
CREATE ROLE notifications LOGIN PASSWORD 'notifications-dev';

CREATE DATABASE inventory     OWNER inventory;
CREATE DATABASE orders        OWNER orders;
CREATE DATABASE notifications OWNER notifications;

-- A service sees its own database only (PUBLIC may connect to any database by default).
REVOKE CONNECT ON DATABASE inventory, orders, notifications FROM PUBLIC;
GRANT CONNECT ON DATABASE inventory     TO inventory;
GRANT CONNECT ON DATABASE orders        TO orders;
GRANT CONNECT ON DATABASE notifications TO notifications;
