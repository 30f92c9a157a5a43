-- Scheduler: leader election, node registry, job list, fire log.

-- name: sched_try_lead
-- Leader election: a session advisory lock held by the leader's own connection.
SELECT pg_try_advisory_lock(%(key)s) AS leading;

-- name: sched_leader_keepalives
-- The leader's lock connection: a leader whose host vanishes (no FIN) is noticed by the server
-- within seconds, which releases the lock for a standby.
SELECT set_config('tcp_keepalives_idle', '5', false), set_config('tcp_keepalives_interval', '1', false),
       set_config('tcp_keepalives_count', '3', false);

-- name: sched_check_lock
-- The leader's lock connection still answers.
SELECT 1 AS alive;

-- name: sched_unlead
-- Give leadership back (clean shutdown).
SELECT pg_advisory_unlock(%(key)s);

-- name: sched_register_node
-- A scheduler process starts.
INSERT INTO neuron_tasks.scheduler_nodes (node_id, host, pid) VALUES (%(node_id)s, %(host)s, %(pid)s)
ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL;

-- name: sched_heartbeat_node
-- A scheduler process is alive; leader_since is set while it leads.
UPDATE neuron_tasks.scheduler_nodes
SET heartbeat_at = now(),
    leader_since = CASE WHEN %(leader)s THEN coalesce(leader_since, now()) END
WHERE node_id = %(node_id)s;

-- name: sched_stop_node
-- A scheduler process stops.
UPDATE neuron_tasks.scheduler_nodes SET stopped_at = now(), leader_since = NULL, heartbeat_at = now()
WHERE node_id = %(node_id)s;

-- name: sched_nodes
-- Scheduler processes seen recently, the leader first.
SELECT node_id, host, pid, started_at, heartbeat_at, leader_since,
       (leader_since IS NOT NULL AND stopped_at IS NULL
        AND heartbeat_at > now() - make_interval(secs => %(stale_s)s)) AS is_leader,
       (stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %(stale_s)s)) AS alive
FROM neuron_tasks.scheduler_nodes
WHERE coalesce(stopped_at, heartbeat_at) > now() - interval '1 day'
ORDER BY is_leader DESC, heartbeat_at DESC;

-- name: sched_upsert_job
-- The leader publishes the jobs it runs and their next fire time.
INSERT INTO neuron_tasks.scheduler_jobs (name, kind, target, queue_name, trigger, next_fire, node_id, updated_at)
VALUES (%(name)s, %(kind)s, %(target)s, %(queue_name)s, %(trigger)s, %(next_fire)s, %(node_id)s, now())
ON CONFLICT (name) DO UPDATE
SET kind = excluded.kind, target = excluded.target, queue_name = excluded.queue_name, trigger = excluded.trigger,
    next_fire = excluded.next_fire, node_id = excluded.node_id, updated_at = now();

-- name: sched_forget_jobs
-- The leader's job list replaces the one an earlier leader published.
DELETE FROM neuron_tasks.scheduler_jobs WHERE NOT (name = ANY(%(names)s::text[]));

-- name: sched_jobs
-- The jobs the live leader declares, with their last fire (and its message) and next fire;
-- none when no scheduler leads (a leader silent for stale_s is gone).
SELECT j.name, j.kind, j.target, j.queue_name, j.trigger, j.next_fire, j.updated_at,
       f.fire_time AS last_fire, f.fired_at AS last_fired_at, f.message_id AS last_message_id, f.note AS last_note,
       (SELECT count(*) FROM neuron_tasks.scheduler_fires c WHERE c.job = j.name) AS fires
FROM neuron_tasks.scheduler_jobs j
JOIN neuron_tasks.scheduler_nodes n
  ON n.node_id = j.node_id AND n.leader_since IS NOT NULL AND n.stopped_at IS NULL
 AND n.heartbeat_at > now() - make_interval(secs => %(stale_s)s)
LEFT JOIN LATERAL (SELECT * FROM neuron_tasks.scheduler_fires f WHERE f.job = j.name
                   ORDER BY fire_time DESC LIMIT 1) f ON true
ORDER BY j.name;

-- name: sched_last_fire
-- The latest recorded fire of a job (where the next leader resumes).
SELECT max(fire_time) AS last_fire FROM neuron_tasks.scheduler_fires WHERE job = %(job)s;

-- name: sched_record_fire
-- Record one fire; the (job, fire_time) key makes a tick happen once whichever node fires it.
INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, node_id, note)
VALUES (%(job)s, %(fire_time)s, %(node_id)s, %(note)s)
ON CONFLICT (job, fire_time) DO NOTHING
RETURNING job;

-- name: sched_enqueue
-- Enqueue the job's actor in the fire's transaction; answers the message id.
SELECT neuron_tasks.enqueue(%(queue)s, %(actor)s, %(args)s, %(kwargs)s, %(options)s) AS message_id;

-- name: sched_fire_message
-- Link a fire to the message it enqueued.
UPDATE neuron_tasks.scheduler_fires SET message_id = %(message_id)s, note = %(note)s
WHERE job = %(job)s AND fire_time = %(fire_time)s;

-- name: sched_trim_fires
-- Retention of the fire log.
DELETE FROM neuron_tasks.scheduler_fires WHERE fired_at < now() - make_interval(secs => %(retention_s)s);

-- name: sched_trim_nodes
-- Forget scheduler processes stopped or silent for a day.
DELETE FROM neuron_tasks.scheduler_nodes WHERE heartbeat_at < now() - interval '1 day';

-- name: sched_table_exists
-- Is a part's table installed (a scheduled job that needs it is skipped until it is)?
SELECT to_regclass(%(name)s) IS NOT NULL AS present;
