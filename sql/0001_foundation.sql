-- Foundation: the privilege baseline every later migration builds on.
--
-- Migrations run as the owner role (scripts/pf-env sets ROLE payflow_owner);
-- nginx connects as the application role (psql variable :app), which gets
-- explicit, minimal grants table by table in later migrations: no default
-- table privileges, so a new table is invisible to the application until a
-- migration says otherwise.

ALTER DEFAULT PRIVILEGES FOR ROLE payflow_owner
    REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

ALTER DEFAULT PRIVILEGES FOR ROLE payflow_owner
    GRANT USAGE ON SEQUENCES TO :"app";

COMMENT ON TABLE schema_migrations IS
    'Applied sql/ migrations; read by GET /readyz as schema_version.';
