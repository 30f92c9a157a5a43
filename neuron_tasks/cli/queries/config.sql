-- `neuron-tasks config` (neuron_tasks/cli/config.py).

-- name: config_reset
-- Drop a runtime value; answers whether one was set (read in the same statement, before the
-- reset deletes it).
WITH was AS (SELECT EXISTS (SELECT 1 FROM neuron_tasks.settings WHERE key = %(key)s) AS was_set)
SELECT was.was_set AS removed, neuron_tasks.reset_setting(%(key)s) AS reset FROM was;
