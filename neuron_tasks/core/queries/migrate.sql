-- Schema migrations: the bookkeeping around schema/NNN_name.sql.  Loaded by neuron_tasks/sql.py.
-- Parameters are psycopg named placeholders; nothing here is built from user input.

-- name: migrations_table_exists
-- Whether the migrations table exists (a fresh database has none).
SELECT to_regclass('neuron_tasks.schema_migrations') IS NOT NULL;

-- name: applied_migrations
-- Every applied migration and the checksum of its file at the time.
SELECT version, checksum FROM neuron_tasks.schema_migrations;

-- name: migration_lock
-- Serialise concurrent upgrades until the end of the transaction.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: create_schema
-- The schema every table lives in.
CREATE SCHEMA IF NOT EXISTS neuron_tasks;

-- name: create_migrations_table
-- The record of applied migrations.
CREATE TABLE IF NOT EXISTS neuron_tasks.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: record_migration
-- A migration was applied.
INSERT INTO neuron_tasks.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: setting_defs_exist
-- Whether the runtime settings tables exist yet.
SELECT to_regclass('neuron_tasks.setting_defs') IS NOT NULL;
