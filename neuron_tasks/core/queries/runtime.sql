-- Runtime settings: their definitions (published from the settings classes) and values.
-- Loaded by neuron_tasks/sql.py. Parameters are psycopg named placeholders; nothing here is
-- built from user input.

-- name: setting_def_upsert
-- Publish one setting's definition (type, bounds, choices, unit, whether it can change live).
INSERT INTO neuron_tasks.setting_defs (key, type, nullable, minimum, exclusive_minimum, maximum,
    exclusive_maximum, choices, pattern, live, unit, default_value, description)
VALUES (%(key)s, %(type)s, %(nullable)s, %(minimum)s, %(exclusive_minimum)s, %(maximum)s,
    %(exclusive_maximum)s, %(choices)s, %(pattern)s, %(live)s, %(unit)s, %(default_value)s, %(description)s)
ON CONFLICT (key) DO UPDATE SET type = excluded.type, nullable = excluded.nullable,
    minimum = excluded.minimum, exclusive_minimum = excluded.exclusive_minimum,
    maximum = excluded.maximum, exclusive_maximum = excluded.exclusive_maximum,
    choices = excluded.choices, pattern = excluded.pattern, live = excluded.live,
    unit = excluded.unit, default_value = excluded.default_value,
    description = excluded.description;

-- name: setting_defs_prune
-- Drop the definitions of settings the installed code no longer has.
DELETE FROM neuron_tasks.setting_defs WHERE NOT key = ANY(%(keys)s);

-- name: settings_table_missing
-- Whether the runtime settings table is still missing (a database not yet upgraded).
SELECT to_regclass('neuron_tasks.settings') IS NULL;

-- name: runtime_values
-- Every runtime setting (`neuron-tasks config set`): key and value as text (NULL = unset).
SELECT key, value FROM neuron_tasks.settings;

-- name: settings_version
-- Changes whenever a runtime setting is set or reset (the polling fallback of NOTIFY).
SELECT count(*) AS entries, max(updated_at) AS updated_at FROM neuron_tasks.settings;

-- name: set_setting
-- Store a runtime setting, validated in SQL against its definition; returns the stored value.
SELECT neuron_tasks.set_setting(%(key)s, %(value)s);

-- name: reset_setting
-- Remove a runtime setting; returns whether one was set.
SELECT neuron_tasks.reset_setting(%(key)s);
