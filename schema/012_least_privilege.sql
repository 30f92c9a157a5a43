-- 012: least privilege (docs/security.md). Group roles to grant to login roles; enqueue from
-- SQL without any table access; who enqueued each message, recorded by the database; the
-- low-privilege role that runs sql_task statements, and the function it runs them through.
-- Run by a superuser or a role with CREATEROLE that owns the schema.

-- Group roles (NOLOGIN). Roles belong to the whole cluster: another database's upgrade may have
-- created them already, or be creating them right now.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['neuron_tasks_producer', 'neuron_tasks_worker', 'neuron_tasks_admin',
                             'neuron_tasks_sql_submitter', 'neuron_tasks_sql_runner'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r AND (rolsuper OR rolbypassrls)) THEN
            RAISE EXCEPTION 'role % exists and is a superuser or bypasses row security', r
                USING HINT = 'these group roles must stay unprivileged: ALTER ROLE ... NOSUPERUSER NOBYPASSRLS';
        END IF;
    END LOOP;
END;
$$;

-- Who enqueued a message: the session's login role (session_user), set on every insert whatever
-- the statement says, kept on every update. Rows from before this version have none.
ALTER TABLE neuron_tasks.messages ADD COLUMN enqueued_by text;

CREATE FUNCTION neuron_tasks.messages_enqueued_by_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.enqueued_by := session_user;
    RETURN NEW;
END;
$$;

CREATE FUNCTION neuron_tasks.messages_enqueued_by_keep_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.enqueued_by := OLD.enqueued_by;
    RETURN NEW;
END;
$$;

CREATE TRIGGER messages_enqueued_by_insert
    BEFORE INSERT ON neuron_tasks.messages
    FOR EACH ROW EXECUTE FUNCTION neuron_tasks.messages_enqueued_by_v1();
CREATE TRIGGER messages_enqueued_by_update
    BEFORE UPDATE OF enqueued_by ON neuron_tasks.messages
    FOR EACH ROW EXECUTE FUNCTION neuron_tasks.messages_enqueued_by_keep_v1();

-- Enqueue from SQL with the owner's rights, so a producer needs EXECUTE on it and nothing else.
-- Every overload, whatever migration defined it last; a later CREATE OR REPLACE must repeat this.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'neuron_tasks'::regnamespace AND p.proname = 'enqueue' LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, neuron_tasks, pg_temp', f);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO neuron_tasks_producer, neuron_tasks_worker, '
                       'neuron_tasks_admin', f);
    END LOOP;
END;
$$;

-- sql_task's statements run here, as the owner neuron_tasks_sql_runner: no privileges beyond
-- what an admin grants it. Inside a SECURITY DEFINER function PostgreSQL refuses SET ROLE,
-- RESET ROLE and SET SESSION AUTHORIZATION, and a function called by SELECT cannot COMMIT.
-- One statement: a cursor refuses a text of several statements (or none) with the same error it
-- gives a statement that returns no rows; the message of a known multi-statement text, in this
-- server's language, tells the two apart. Rows are fetched up to p_max_rows and p_max_bytes (of
-- JSON); the rest is only counted. The time limit is the caller's statement_timeout, armed
-- before this statement starts, so a SET inside cannot lift it.
CREATE FUNCTION neuron_tasks.sql_task_run_v1(p_statement text, p_max_rows integer, p_max_bytes integer)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    c         refcursor;
    r         record;
    v_rows    jsonb := '[]'::jsonb;
    v_columns jsonb;
    v_row     jsonb;
    v_n       bigint := 0;
    v_more    bigint := 0;
    v_bytes   bigint := 0;
    v_cut     boolean := false;
    v_cursor  boolean := false;
    v_msg     text;
    v_multi   text;
BEGIN
    BEGIN
        OPEN c FOR EXECUTE p_statement;
        v_cursor := true;
    EXCEPTION WHEN invalid_cursor_definition THEN
        GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT;
        BEGIN
            OPEN c FOR EXECUTE 'SELECT 1; SELECT 2';
        EXCEPTION WHEN invalid_cursor_definition THEN
            GET STACKED DIAGNOSTICS v_multi = MESSAGE_TEXT;
        END;
        IF v_msg IS NOT DISTINCT FROM v_multi THEN
            RAISE EXCEPTION 'send exactly one statement per task (this text holds several, or none)'
                USING ERRCODE = '42601';
        END IF;
    END;
    IF NOT v_cursor THEN
        EXECUTE p_statement;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        RETURN jsonb_build_object('rowcount', v_n);
    END IF;
    WHILE v_n < greatest(p_max_rows, 0) LOOP
        FETCH c INTO r;
        EXIT WHEN NOT FOUND;
        v_n := v_n + 1;
        SELECT jsonb_agg(e.value::jsonb ORDER BY e.n), jsonb_agg(e.key ORDER BY e.n)
          INTO v_row, v_columns
          FROM json_each(to_json(r)) WITH ORDINALITY AS e(key, value, n);
        v_bytes := v_bytes + octet_length(v_row::text);
        IF v_bytes > p_max_bytes THEN
            v_cut := true;
            EXIT;
        END IF;
        v_rows := v_rows || jsonb_build_array(coalesce(v_row, '[]'::jsonb));
    END LOOP;
    MOVE FORWARD ALL IN c;
    GET DIAGNOSTICS v_more = ROW_COUNT;
    CLOSE c;
    IF p_max_rows <= 0 THEN
        RETURN jsonb_build_object('rowcount', v_n + v_more);
    END IF;
    RETURN jsonb_build_object('rowcount', v_n + v_more, 'rows', v_rows,
                              'columns', coalesce(v_columns, '[]'::jsonb), 'truncated', v_cut OR v_more > 0);
END;
$$;

-- Hand the function to the runner. A non-superuser may give an object only to a role it belongs
-- to that may create in the schema: both for the moment of the transfer.
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT neuron_tasks_sql_runner TO %I', current_user);
        GRANT CREATE ON SCHEMA neuron_tasks TO neuron_tasks_sql_runner;
    END IF;
    ALTER FUNCTION neuron_tasks.sql_task_run_v1(text, integer, integer) OWNER TO neuron_tasks_sql_runner;
    -- The runner must never reach this schema: with USAGE it could ALTER its own function.
    REVOKE ALL ON SCHEMA neuron_tasks FROM neuron_tasks_sql_runner;
END;
$$;
REVOKE ALL ON FUNCTION neuron_tasks.sql_task_run_v1(text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION neuron_tasks.sql_task_run_v1(text, integer, integer) TO neuron_tasks_worker;

-- The groups' rights. Producers: enqueue (above), nothing else. Workers: read and write every
-- table of the schema, but neither the settings nor the migrations, and no DDL. Admins: every
-- table, truncate included, and whom to let submit SQL; no DDL, no triggers (both would let them
-- run code as the schema's owner).
GRANT USAGE ON SCHEMA neuron_tasks TO neuron_tasks_producer, neuron_tasks_worker, neuron_tasks_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA neuron_tasks TO neuron_tasks_worker;
REVOKE INSERT, UPDATE, DELETE ON neuron_tasks.schema_migrations, neuron_tasks.setting_defs, neuron_tasks.settings
    FROM neuron_tasks_worker;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA neuron_tasks TO neuron_tasks_worker;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA neuron_tasks TO neuron_tasks_admin;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA neuron_tasks TO neuron_tasks_admin;
GRANT neuron_tasks_sql_submitter TO neuron_tasks_admin WITH ADMIN OPTION;

-- Tables and sequences later migrations create (as this same role) get the same grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA neuron_tasks
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO neuron_tasks_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA neuron_tasks
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO neuron_tasks_admin;
ALTER DEFAULT PRIVILEGES IN SCHEMA neuron_tasks GRANT USAGE, SELECT ON SEQUENCES TO neuron_tasks_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA neuron_tasks GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO neuron_tasks_admin;

-- Provider state used to be keyed by the base URL as configured, credentials included: drop
-- such rows (the next call starts a clean one under the redacted URL) and scrub old errors.
DELETE FROM neuron_tasks.llm_provider_state WHERE provider ~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*@';
UPDATE neuron_tasks.llm_provider_state
SET last_error = regexp_replace(last_error, '(://[^/@\s:]*):[^/@\s]*@', '\1:***@', 'g')
WHERE last_error ~ '://[^/@\s]*:[^/@\s]*@';
UPDATE neuron_tasks.messages
SET last_error = regexp_replace(last_error, '(://[^/@\s:]*):[^/@\s]*@', '\1:***@', 'g'),
    errors = regexp_replace(errors::text, '(://[^/@\s:"]*):[^/@\s"]*@', '\1:***@', 'g')::jsonb
WHERE state = 'failed' AND (last_error ~ '://[^/@\s]*:[^/@\s]*@' OR errors::text ~ '://[^/@\s"]*:[^/@\s"]*@');
