-- 006: settings that change at runtime (`neuron-tasks config set`, neuron_tasks.set_setting()).
-- setting_defs is filled from the pydantic settings classes by `neuron-tasks db upgrade`
-- (neuron_tasks/runtime.py), so SQL validates exactly what Python declares.

CREATE TABLE neuron_tasks.setting_defs (
    key          text PRIMARY KEY,
    type         text NOT NULL CHECK (type IN ('integer', 'number', 'boolean', 'string')),
    nullable     boolean NOT NULL DEFAULT false,
    minimum      double precision,
    exclusive_minimum boolean NOT NULL DEFAULT false,
    maximum      double precision,
    exclusive_maximum boolean NOT NULL DEFAULT false,
    choices      text[],
    pattern      text,
    live         boolean NOT NULL,
    unit         text NOT NULL DEFAULT '',
    default_value text,
    description  text NOT NULL DEFAULT ''
);

CREATE TABLE neuron_tasks.settings (
    key        text PRIMARY KEY REFERENCES neuron_tasks.setting_defs (key) ON DELETE CASCADE,
    value      text,                -- NULL: explicitly unset (None)
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Validate and store one runtime setting; workers apply it within seconds (NOTIFY + polling).
CREATE FUNCTION neuron_tasks.set_setting(p_key text, p_value text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d   neuron_tasks.setting_defs%ROWTYPE;
    num double precision;
    v   text := p_value;
BEGIN
    SELECT * INTO d FROM neuron_tasks.setting_defs WHERE key = p_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting %', quote_literal(p_key)
            USING HINT = 'see `neuron-tasks config show` or SELECT key FROM neuron_tasks.settings_view',
                  ERRCODE = '22023';
    END IF;
    IF NOT d.live THEN
        RAISE EXCEPTION 'setting % cannot change while processes run', p_key
            USING HINT = format('set NEURON_TASKS_%s in the environment or the config file and restart', upper(p_key)),
                  ERRCODE = '55000';
    END IF;
    IF v IS NULL OR lower(v) IN ('null', 'none', '') THEN
        IF NOT d.nullable THEN
            RAISE EXCEPTION 'setting % needs a value', p_key USING ERRCODE = '22023';
        END IF;
        v := NULL;
    ELSIF d.type = 'integer' THEN
        IF v !~ '^[+-]?[0-9]+$' THEN
            RAISE EXCEPTION 'setting % must be an integer, got %', p_key, quote_literal(v) USING ERRCODE = '22023';
        END IF;
        num := v::double precision;
    ELSIF d.type = 'number' THEN
        BEGIN
            num := v::double precision;
        EXCEPTION WHEN invalid_text_representation THEN
            RAISE EXCEPTION 'setting % must be a number, got %', p_key, quote_literal(v) USING ERRCODE = '22023';
        END;
        IF num = 'NaN'::float8 OR num IN ('Infinity'::float8, '-Infinity'::float8) THEN
            RAISE EXCEPTION 'setting % must be a finite number', p_key USING ERRCODE = '22023';
        END IF;
    ELSIF d.type = 'boolean' THEN
        IF lower(v) NOT IN ('true', 'false', '1', '0', 'yes', 'no', 'on', 'off') THEN
            RAISE EXCEPTION 'setting % must be true or false, got %', p_key, quote_literal(v) USING ERRCODE = '22023';
        END IF;
        v := CASE WHEN lower(v) IN ('true', '1', 'yes', 'on') THEN 'true' ELSE 'false' END;
    END IF;
    IF num IS NOT NULL THEN
        IF d.minimum IS NOT NULL AND (num < d.minimum OR (d.exclusive_minimum AND num = d.minimum)) THEN
            RAISE EXCEPTION 'setting % must be % %', p_key, CASE WHEN d.exclusive_minimum THEN '>' ELSE '>=' END,
                d.minimum USING ERRCODE = '22003';
        END IF;
        IF d.maximum IS NOT NULL AND (num > d.maximum OR (d.exclusive_maximum AND num = d.maximum)) THEN
            RAISE EXCEPTION 'setting % must be % %', p_key, CASE WHEN d.exclusive_maximum THEN '<' ELSE '<=' END,
                d.maximum USING ERRCODE = '22003';
        END IF;
    END IF;
    IF v IS NOT NULL AND d.choices IS NOT NULL AND NOT v = ANY (d.choices) THEN
        RAISE EXCEPTION 'setting % must be one of %, got %', p_key, array_to_string(d.choices, ', '), quote_literal(v)
            USING ERRCODE = '22023';
    END IF;
    IF v IS NOT NULL AND d.pattern IS NOT NULL AND v !~ d.pattern THEN
        RAISE EXCEPTION 'setting % must match %, got %', p_key, d.pattern, quote_literal(v) USING ERRCODE = '22023';
    END IF;
    INSERT INTO neuron_tasks.settings (key, value, updated_at) VALUES (p_key, v, now())
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now();
    PERFORM pg_notify('neuron_tasks_settings', p_key);
    RETURN v;
END;
$$;

-- Drop a runtime setting: the file, environment or built-in value applies again.
CREATE FUNCTION neuron_tasks.reset_setting(p_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM neuron_tasks.settings WHERE key = p_key;
    PERFORM pg_notify('neuron_tasks_settings', p_key);
    RETURN FOUND;
END;
$$;

-- The equivalent of the seed's pg_settings query, as seen from the database: runtime values and
-- built-in defaults (file and environment values are per process: `neuron-tasks config show`).
CREATE VIEW neuron_tasks.settings_view AS
    SELECT d.key,
           CASE WHEN s.key IS NOT NULL THEN s.value ELSE d.default_value END AS value,
           d.unit,
           CASE WHEN s.key IS NOT NULL THEN 'runtime' ELSE 'default' END AS source,
           d.live,
           d.description,
           s.updated_at
    FROM neuron_tasks.setting_defs d
    LEFT JOIN neuron_tasks.settings s ON s.key = d.key
    ORDER BY d.key;
