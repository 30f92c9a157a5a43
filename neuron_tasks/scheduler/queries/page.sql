-- The schedules page of the dashboard (scheduler/page.py). Each read is bounded.

-- name: sched_page_jobs
-- Every scheduled job: next fire, last fire (the key's index, newest first), fires in the last
-- day, and the node that published it.
SELECT j.name, j.kind, j.target, j.queue_name, j.trigger, j.next_fire, j.updated_at,
       f.fire_time AS last_fire, f.fired_at AS last_fired_at, f.message_id AS last_message_id, f.note AS last_note,
       (SELECT count(*) FROM neuron_tasks.scheduler_fires c
        WHERE c.job = j.name AND c.fire_time > now() - interval '1 day')::bigint AS fires_day,
       (SELECT count(*) FROM neuron_tasks.scheduler_fires c WHERE c.job = j.name)::bigint AS fires,
       n.host || ':' || n.pid AS node
FROM neuron_tasks.scheduler_jobs j
LEFT JOIN LATERAL (SELECT * FROM neuron_tasks.scheduler_fires f WHERE f.job = j.name
                   ORDER BY fire_time DESC LIMIT 1) f ON true
LEFT JOIN neuron_tasks.scheduler_nodes n ON n.node_id = j.node_id
ORDER BY j.name
LIMIT %(limit)s;

-- name: sched_page_fires
-- The newest fires of the given jobs, newest first (each job's latest through its key's index).
SELECT f.job, f.fire_time, f.fired_at, f.message_id, f.note, n.host || ':' || n.pid AS node,
       extract(epoch FROM f.fired_at - f.fire_time)::float8 AS late_s
FROM unnest(%(jobs)s::text[]) j(name)
CROSS JOIN LATERAL (SELECT * FROM neuron_tasks.scheduler_fires f WHERE f.job = j.name
                    ORDER BY fire_time DESC LIMIT %(limit)s) f
LEFT JOIN neuron_tasks.scheduler_nodes n ON n.node_id = f.node_id
ORDER BY f.fire_time DESC, f.job
LIMIT %(limit)s;

-- name: sched_page_fires_per_hour
-- Fires of the given jobs per hour over the last day.
SELECT f.job, date_trunc('hour', f.fire_time) AS hour, count(*)::bigint AS n
FROM unnest(%(jobs)s::text[]) j(name)
JOIN neuron_tasks.scheduler_fires f ON f.job = j.name AND f.fire_time > date_trunc('hour', now()) - interval '23 hours'
GROUP BY 1, 2;

-- name: sched_page_now_hour
SELECT date_trunc('hour', now()) AS hour;
