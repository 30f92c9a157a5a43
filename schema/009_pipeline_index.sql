-- 009: pipelines may write into a vector index (`destination => 'index:NAME'`), and a vector
-- index can be dropped from SQL. Item ids: the key itself for integer keys, else a 63-bit hash
-- of the key text; each item's metadata holds {"pipeline", "key", "source_hash"}.

-- Drop a vector index with its items, snapshot, metrics, samples, feedback and decisions.
CREATE FUNCTION neuron_tasks.drop_vector_index(index_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_found integer;
BEGIN
    DELETE FROM neuron_tasks.vector_queries q WHERE q.index_name = drop_vector_index.index_name;
    DELETE FROM neuron_tasks.vector_query_samples s WHERE s.index_name = drop_vector_index.index_name;
    DELETE FROM neuron_tasks.vector_feedback f WHERE f.index_name = drop_vector_index.index_name;
    DELETE FROM neuron_tasks.vector_tuner_decisions d WHERE d.index_name = drop_vector_index.index_name;
    DELETE FROM neuron_tasks.vector_indexes i WHERE i.name = drop_vector_index.index_name;
    GET DIAGNOSTICS v_found = ROW_COUNT;
    RETURN v_found > 0;
END;
$$;

-- The vector-index item id of a pipeline key.
CREATE FUNCTION neuron_tasks.pipeline_item_id_v1(key text, key_type text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN key_type IN ('smallint', 'integer', 'bigint') THEN key::bigint
                ELSE hashtextextended(key, 0) & 9223372036854775807 END
$$;

-- Rows in a table, or live items in a vector index ('index:NAME'), for the metrics view.
CREATE OR REPLACE FUNCTION neuron_tasks.pipeline_count_v1(tbl text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v bigint;
BEGIN
    IF tbl LIKE 'index:%' THEN
        SELECT live_count INTO v FROM neuron_tasks.vector_indexes WHERE name = substr(tbl, 7);
        RETURN v;
    END IF;
    IF to_regclass(tbl) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT count(*) FROM ' || tbl INTO v;
    RETURN v;
END;
$$;

CREATE OR REPLACE FUNCTION neuron_tasks.create_pipeline(
    name                     text,
    source                   text,
    key_column               text,
    data_column              text,
    destination              text DEFAULT NULL,
    steps                    jsonb DEFAULT '[{"op": "embed"}]',
    auto_processing          text DEFAULT 'background',
    background_sync_interval interval DEFAULT '30 seconds',
    batch_size               integer DEFAULT 100
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_src      regclass;
    v_src_name text;
    v_dst      text;
    v_dst_reg  regclass;
    v_key_type text;
    v_data_type text;
    v_step     jsonb;
    v_shape    text;
    v_index    text;
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'create_pipeline: invalid pipeline name %', quote_nullable(name)
            USING HINT = 'use 1-40 lower-case letters, digits or underscores, starting with a letter',
                  ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM neuron_tasks.pipelines p WHERE p.name = create_pipeline.name) THEN
        RAISE EXCEPTION 'create_pipeline: pipeline % already exists', name
            USING HINT = 'update it, or drop it first', ERRCODE = '42710';
    END IF;
    v_src := to_regclass(source);
    IF v_src IS NULL OR NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = v_src AND relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION 'create_pipeline: source table % does not exist', quote_nullable(source)
            USING HINT = 'create the table first (schema.table, or a table on the search_path)',
                  ERRCODE = '42P01';
    END IF;
    SELECT format('%I.%I', n.nspname, c.relname) INTO v_src_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v_src;
    SELECT format_type(a.atttypid, a.atttypmod) INTO v_key_type
    FROM pg_attribute a WHERE a.attrelid = v_src AND a.attname = key_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_key_type IS NULL THEN
        RAISE EXCEPTION 'create_pipeline: table % has no key column %', v_src_name, quote_nullable(key_column)
            USING ERRCODE = '42703';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod), t.typcategory INTO v_data_type, v_shape
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = v_src AND a.attname = data_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_data_type IS NULL THEN
        RAISE EXCEPTION 'create_pipeline: table % has no data column %', v_src_name, quote_nullable(data_column)
            USING ERRCODE = '42703';
    END IF;
    IF v_shape <> 'S' THEN
        RAISE EXCEPTION 'create_pipeline: data column %.% is %, not text', v_src_name, data_column, v_data_type
            USING HINT = 'use a text, varchar or char column (or a view/generated column casting to text)',
                  ERRCODE = '42804';
    END IF;
    IF jsonb_typeof(steps) IS DISTINCT FROM 'array' OR jsonb_array_length(steps) <> 1 THEN
        RAISE EXCEPTION 'create_pipeline: steps must be a JSON array of one step, got %', steps
            USING HINT = 'e.g. [{"op": "embed", "model": "local:all-MiniLM-L6-v2"}]', ERRCODE = '22023';
    END IF;
    v_step := steps->0;
    IF v_step->>'op' IS DISTINCT FROM 'embed' THEN
        RAISE EXCEPTION 'create_pipeline: unknown step %', v_step
            USING HINT = 'the one step supported is {"op": "embed", "model": "..."}', ERRCODE = '22023';
    END IF;
    IF auto_processing IS NULL OR auto_processing NOT IN ('live', 'background', 'disabled') THEN
        RAISE EXCEPTION 'create_pipeline: auto_processing must be live, background or disabled, got %',
            quote_nullable(auto_processing) USING ERRCODE = '22023';
    END IF;
    IF background_sync_interval IS NULL
       OR background_sync_interval NOT BETWEEN interval '1 second' AND interval '2 days' THEN
        RAISE EXCEPTION 'create_pipeline: background_sync_interval must be between 1 second and 2 days, got %',
            quote_nullable(background_sync_interval) USING ERRCODE = '22023';
    END IF;
    IF batch_size IS NULL OR batch_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'create_pipeline: batch_size must be between 1 and 10000, got %',
            quote_nullable(batch_size) USING ERRCODE = '22023';
    END IF;
    destination := coalesce(destination, name || '_embeddings');
    IF destination LIKE 'index:%' THEN
        -- A vector index: created at the first sync with the model's dimension if missing
        -- (an existing one's dimension is checked then too). Item ids are the key itself for
        -- integer keys, else a 63-bit hash of it (pipeline_item_id_v1); metadata holds the key.
        v_index := substr(destination, 7);
        IF v_index !~ '^[A-Za-z0-9_.-]{1,100}$' THEN
            RAISE EXCEPTION 'create_pipeline: invalid vector index name %', quote_nullable(v_index)
                USING HINT = 'use index:NAME with 1-100 letters, digits, _ . or -', ERRCODE = '22023';
        END IF;
        v_dst := 'index:' || v_index;
    ELSE
        v_dst_reg := to_regclass(destination);
        IF v_dst_reg IS NOT NULL THEN
            SELECT format('%I.%I', n.nspname, c.relname) INTO v_dst
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v_dst_reg;
            IF v_dst_reg = v_src THEN
                RAISE EXCEPTION 'create_pipeline: destination % is the source table', v_dst USING ERRCODE = '22023';
            END IF;
            SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
            INTO v_shape FROM pg_attribute a WHERE a.attrelid = v_dst_reg AND a.attnum > 0 AND NOT a.attisdropped;
            IF v_shape IS DISTINCT FROM 'key text, embedding real[], source_hash text, model text, '
                                        'created_at timestamp with time zone, updated_at timestamp with time zone' THEN
                RAISE EXCEPTION 'create_pipeline: destination % exists with another shape (%)', v_dst, v_shape
                    USING HINT = 'drop it, or name a new destination table (it is created for you)', ERRCODE = '42P07';
            END IF;
        ELSE
            IF destination !~ '^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$' THEN
                RAISE EXCEPTION 'create_pipeline: invalid destination table name %', quote_nullable(destination)
                    USING HINT = 'use [schema.]table with letters, digits and underscores', ERRCODE = '22023';
            END IF;
            IF position('.' IN destination) > 0 THEN
                v_dst := format('%I.%I', split_part(destination, '.', 1), split_part(destination, '.', 2));
            ELSE
                v_dst := format('%I.%I', current_schema(), destination);
            END IF;
            EXECUTE format('CREATE TABLE %s (key text PRIMARY KEY, embedding real[] NOT NULL, '
                           'source_hash text NOT NULL, model text, '
                           'created_at timestamptz NOT NULL DEFAULT now(), '
                           'updated_at timestamptz NOT NULL DEFAULT now())', v_dst);
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM neuron_tasks.pipelines p WHERE p.destination = v_dst) THEN
        RAISE EXCEPTION 'create_pipeline: destination % belongs to another pipeline', v_dst USING ERRCODE = '42710';
    END IF;

    INSERT INTO neuron_tasks.pipelines (name, source_table, key_column, key_type, data_column, steps,
        destination, auto_processing, background_sync_interval, batch_size)
    VALUES (name, v_src_name, key_column, v_key_type, data_column, steps, v_dst, auto_processing,
        background_sync_interval, batch_size);

    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.pipeline_capture_v1(%L, %L)',
                   'neuron_tasks_pl_' || name || '_ins', v_src_name, name, key_column);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.pipeline_capture_v1(%L, %L)',
                   'neuron_tasks_pl_' || name || '_upd', v_src_name, name, key_column);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.pipeline_capture_v1(%L, %L)',
                   'neuron_tasks_pl_' || name || '_del', v_src_name, name, key_column);

    -- Initial backfill: every existing row (and every destination row, so stale ones go).
    IF v_index IS NOT NULL THEN
        EXECUTE format('INSERT INTO neuron_tasks.pipeline_backlog (pipeline, key) '
                       'SELECT $1, (%I)::text FROM %s UNION SELECT $1, metadata->>''key'' '
                       'FROM neuron_tasks.vector_items WHERE index_name = $2 AND NOT deleted '
                       'AND metadata ? ''key'' ON CONFLICT DO NOTHING', key_column, v_src_name)
            USING name, v_index;
    ELSE
        EXECUTE format('INSERT INTO neuron_tasks.pipeline_backlog (pipeline, key) '
                       'SELECT $1, (%I)::text FROM %s UNION SELECT $1, key FROM %s ON CONFLICT DO NOTHING',
                       key_column, v_src_name, v_dst) USING name;
    END IF;
    IF auto_processing = 'live' THEN
        PERFORM neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync', jsonb_build_array(name));
    END IF;
    RETURN name;
END;
$$;

-- Drop a pipeline: its triggers, backlog and errors; the destination table (or vector index)
-- only when asked.
CREATE OR REPLACE FUNCTION neuron_tasks.drop_pipeline(name text, drop_destination boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    p neuron_tasks.pipelines;
    t text;
BEGIN
    SELECT * INTO p FROM neuron_tasks.pipelines WHERE pipelines.name = drop_pipeline.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF to_regclass(p.source_table) IS NOT NULL THEN
        FOREACH t IN ARRAY ARRAY['_ins', '_upd', '_del'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'neuron_tasks_pl_' || p.name || t, p.source_table);
        END LOOP;
    END IF;
    DELETE FROM neuron_tasks.pipelines WHERE pipelines.name = p.name;
    IF drop_destination AND p.destination LIKE 'index:%' THEN
        PERFORM neuron_tasks.drop_vector_index(substr(p.destination, 7));
    ELSIF drop_destination THEN
        EXECUTE format('DROP TABLE IF EXISTS %s', p.destination);
    END IF;
    RETURN true;
END;
$$;

-- Is a destination empty? (NOT EXISTS, not a second count(*), for the metrics view's NoResults.)
CREATE FUNCTION neuron_tasks.pipeline_empty_v1(tbl text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v boolean;
BEGIN
    IF tbl LIKE 'index:%' THEN
        SELECT live_count = 0 INTO v FROM neuron_tasks.vector_indexes WHERE name = substr(tbl, 7);
        RETURN coalesce(v, true);
    END IF;
    IF to_regclass(tbl) IS NULL THEN
        RETURN true;
    END IF;
    EXECUTE 'SELECT NOT EXISTS (SELECT 1 FROM ' || tbl || ')' INTO v;
    RETURN v;
END;
$$;

-- The latest per-record errors of a pipeline (status command, dashboard).
CREATE INDEX pipeline_errors_latest ON neuron_tasks.pipeline_errors (pipeline, failed_at DESC);

CREATE OR REPLACE VIEW neuron_tasks.pipeline_metrics AS
SELECT p.name AS pipeline,
       p.auto_processing,
       b.unprocessed AS table_unprocessed_rows,
       NULL::bigint AS volume_scans_completed,
       neuron_tasks.pipeline_count_v1(p.source_table) AS count_source_records,
       neuron_tasks.pipeline_count_v1(p.destination) AS count_destination_records,
       e.errors AS count_errors,
       CASE
           WHEN EXISTS (SELECT 1 FROM pg_locks l
                        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                          AND l.classid = hashtext('neuron_tasks.pipeline')::oid
                          AND l.objid = hashtext(p.name)::oid) THEN 'Processing'
           WHEN p.status = 'failed' THEN 'Failed'
           WHEN e.errors > 0 THEN 'PartialErrors'
           WHEN b.unprocessed > 0 OR p.status = 'new' THEN 'Stale'
           WHEN neuron_tasks.pipeline_empty_v1(p.destination) THEN 'NoResults'
           ELSE 'UpToDate'
       END AS status,
       p.last_sync_at,
       p.last_error
FROM neuron_tasks.pipelines p
CROSS JOIN LATERAL (SELECT count(*) AS unprocessed FROM neuron_tasks.pipeline_backlog x
                    WHERE x.pipeline = p.name) b
CROSS JOIN LATERAL (SELECT count(*) AS errors FROM neuron_tasks.pipeline_errors x
                    WHERE x.pipeline = p.name) e
UNION ALL
SELECT v.name, 'background', NULL::bigint, v.scans_completed,
       f.files, neuron_tasks.pipeline_count_v1(v.destination), 0::bigint,
       CASE
           WHEN EXISTS (SELECT 1 FROM pg_locks l
                        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                          AND l.classid = hashtext('neuron_tasks.pipeline')::oid
                          AND l.objid = hashtext(v.name)::oid) THEN 'Processing'
           WHEN v.status = 'failed' THEN 'Failed'
           WHEN v.status = 'new' THEN 'Stale'
           WHEN neuron_tasks.pipeline_empty_v1(v.destination) THEN 'NoResults'
           ELSE 'UpToDate'
       END,
       v.last_sync_at, v.last_error
FROM neuron_tasks.pipeline_volumes v
CROSS JOIN LATERAL (SELECT count(*) AS files FROM neuron_tasks.pipeline_volume_files x
                    WHERE x.volume = v.name) f;

-- Change a pipeline from SQL (NULL keeps a value). Switching to live mode with changes waiting
-- (kept while disabled) enqueues a sync at once, as background mode's next tick would.
CREATE FUNCTION neuron_tasks.update_pipeline(
    name                     text,
    auto_processing          text DEFAULT NULL,
    background_sync_interval interval DEFAULT NULL,
    batch_size               integer DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_mode text;
BEGIN
    IF auto_processing IS NOT NULL AND auto_processing NOT IN ('live', 'background', 'disabled') THEN
        RAISE EXCEPTION 'update_pipeline: auto_processing must be live, background or disabled, got %',
            auto_processing USING ERRCODE = '22023';
    END IF;
    IF background_sync_interval IS NOT NULL
       AND background_sync_interval NOT BETWEEN interval '1 second' AND interval '2 days' THEN
        RAISE EXCEPTION 'update_pipeline: background_sync_interval must be between 1 second and 2 days, got %',
            background_sync_interval USING ERRCODE = '22023';
    END IF;
    IF batch_size IS NOT NULL AND batch_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'update_pipeline: batch_size must be between 1 and 10000, got %', batch_size
            USING ERRCODE = '22023';
    END IF;
    UPDATE neuron_tasks.pipelines p
    SET auto_processing = coalesce(update_pipeline.auto_processing, p.auto_processing),
        background_sync_interval = coalesce(update_pipeline.background_sync_interval, p.background_sync_interval),
        batch_size = coalesce(update_pipeline.batch_size, p.batch_size),
        updated_at = now()
    WHERE p.name = update_pipeline.name
    RETURNING p.auto_processing INTO v_mode;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF update_pipeline.auto_processing = 'live'
       AND EXISTS (SELECT 1 FROM neuron_tasks.pipeline_backlog b WHERE b.pipeline = update_pipeline.name) THEN
        PERFORM neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync',
                                     jsonb_build_array(update_pipeline.name));
    END IF;
    RETURN true;
END;
$$;

-- Enqueue a sync of a pipeline (table or folder) now; returns the message id.
CREATE FUNCTION neuron_tasks.run_pipeline(name text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM neuron_tasks.pipelines p WHERE p.name = run_pipeline.name)
       AND NOT EXISTS (SELECT 1 FROM neuron_tasks.pipeline_volumes v WHERE v.name = run_pipeline.name) THEN
        RAISE EXCEPTION 'run_pipeline: no pipeline named %', quote_nullable(name) USING ERRCODE = '42704';
    END IF;
    RETURN neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync', jsonb_build_array(name));
END;
$$;
