-- Worker supervisor (neuron_tasks/worker): what its /metrics reads from the database at each scrape.

-- name: exporter_queue_depth
-- Live messages per queue and state, from the counters the database keeps (a few rows per queue,
-- whatever the backlog), and how long the pending message due first has waited.
SELECT c.queue_name,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'pending'), 0)::bigint  AS pending,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'running'), 0)::bigint  AS running,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'retrying'), 0)::bigint AS retrying,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'failed'), 0)::bigint   AS failed,
       extract(epoch FROM now() - (
           SELECT m.enqueued_at FROM neuron_tasks.messages m
           WHERE m.queue_name = c.queue_name AND m.state IN ('pending', 'retrying') AND m.state = 'pending'
           ORDER BY m.eta LIMIT 1))::float8 AS oldest_pending_s
FROM neuron_tasks.queue_counters c
GROUP BY c.queue_name
HAVING sum(c.n) <> 0;

-- name: exporter_workers_by_status
-- Worker processes by status (running, stale, stopped).
SELECT status, count(*) AS n FROM neuron_tasks.worker_status() GROUP BY status;

-- The supervisor of `neuron-tasks worker` keeps the leases of its children: a child's own threads
-- may be starved (a job that holds the GIL) or stuck, the supervisor runs no job.

-- name: supervisor_renew_leases
-- Every live child's held messages keep their leases (one statement for all children).
UPDATE neuron_tasks.messages
SET lease_expires_at = now() + %(lease_s)s * interval '1 second'
WHERE lease_owner = ANY(%(owners)s::uuid[]) AND state = 'running';

-- name: supervisor_expire_leases
-- A child died: its held messages' leases end now, so the sweep (reclaim_expired) that follows
-- returns them at once, counting the death as a lease expiry would.
UPDATE neuron_tasks.messages
SET lease_expires_at = now() - interval '1 second'
WHERE lease_owner = %(owner)s AND state = 'running';

-- name: supervisor_overdue_killed
-- The supervisor killed a child whose job outlived its time limit by the grace period: the job is
-- marked started (so reclaim_expired counts this death against it), the reason
-- goes in its errors, and its lease ends now.
UPDATE neuron_tasks.messages
SET started_attempt = attempts,
    lease_expires_at = now() - interval '1 second',
    last_error = %(error)s::text,
    errors = errors || jsonb_build_array(jsonb_build_object(
        'at', now(), 'attempt', attempts, 'type', 'neuron_tasks.errors.HardTimeLimit',
        'message', %(error)s::text, 'traceback', ''))
WHERE id = ANY(%(ids)s::bigint[]) AND lease_owner = %(owner)s AND state = 'running';

-- name: supervisor_release_innocent
-- The other messages of a child killed for an overdue job go back to their queues at once, with no
-- death counted (the kill was not theirs), and give back their topic slots.
WITH back AS (
    UPDATE neuron_tasks.messages
    SET state = CASE WHEN retries > 0 THEN 'retrying' ELSE 'pending' END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    WHERE lease_owner = %(owner)s AND state = 'running' AND NOT (id = ANY(%(ids)s::bigint[]))
    RETURNING id, queue_name),
freed AS (
    UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
    WHERE holder IN (SELECT id FROM back))
SELECT queue_name FROM back;
