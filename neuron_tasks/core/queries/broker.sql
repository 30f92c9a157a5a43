-- The broker's statements, by name.  Loaded by neuron_tasks/sql.py.
-- Parameters are psycopg named placeholders; nothing here is built from user input.

-- name: now
-- The server's clock (leases, join epochs).
SELECT now();

-- name: dequeue
-- Claim up to `limit` ready messages of a queue for this worker. Fair across tenants: each
-- tenant with ready messages (found by a skip scan of messages_ready_idx) gets an equal share of
-- the batch, lowest priority value first within a tenant; tenants blocked by their rate limit are
-- left for later. A message of a topic with a concurrency limit is claimed only together with a
-- free slot of its topic, which it holds until it is acked (slots locked SKIP LOCKED: two workers
-- never take the same one).
WITH RECURSIVE tenants AS (
    (SELECT coalesce(tenant, '') AS t FROM neuron_tasks.messages
     WHERE queue_name = %(queue_name)s AND state IN ('pending', 'retrying')
     ORDER BY coalesce(tenant, '') LIMIT 1)
    UNION ALL
    SELECT (SELECT coalesce(m.tenant, '') FROM neuron_tasks.messages m
            WHERE m.queue_name = %(queue_name)s AND m.state IN ('pending', 'retrying')
              AND coalesce(m.tenant, '') > tenants.t
            ORDER BY coalesce(m.tenant, '') LIMIT 1)
    FROM tenants WHERE tenants.t IS NOT NULL
),
open_tenants AS (
    SELECT t FROM tenants
    WHERE t IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM neuron_tasks.tenant_buckets b WHERE b.tenant = tenants.t AND b.blocked_until > now())
),
share AS (
    SELECT greatest(1, ceil(%(limit)s::float8 / greatest(count(*), 1)))::int AS n FROM open_tenants
),
limited AS (
    SELECT DISTINCT topic FROM neuron_tasks.topic_slots
),
free_slots AS (
    SELECT f.topic, f.slot, row_number() OVER (PARTITION BY f.topic ORDER BY f.slot) AS rn
    FROM (SELECT s.topic, s.slot FROM neuron_tasks.topic_slots s
          WHERE s.holder IS NULL OR NOT neuron_tasks.slot_holder_alive_v1(s.holder)
          FOR UPDATE SKIP LOCKED) AS f
),
candidates AS (
    SELECT c.id, c.topic, c.priority, c.eta FROM open_tenants o CROSS JOIN LATERAL (
        SELECT m.id, m.topic, m.priority, m.eta FROM neuron_tasks.messages m
        WHERE m.queue_name = %(queue_name)s AND coalesce(m.tenant, '') = o.t
          AND m.state IN ('pending', 'retrying') AND m.eta <= now()
        ORDER BY m.priority, m.eta, m.id
        LIMIT (SELECT n FROM share)
        FOR UPDATE SKIP LOCKED) AS c
),
ranked AS (
    SELECT c.id, c.topic,
           CASE WHEN c.topic IN (SELECT topic FROM limited)
                THEN row_number() OVER (PARTITION BY c.topic ORDER BY c.priority, c.eta, c.id) END AS rn
    FROM candidates c
),
picked AS (
    SELECT r.id, r.topic, r.rn FROM ranked r
    WHERE r.rn IS NULL OR r.rn <= (SELECT count(*) FROM free_slots f WHERE f.topic = r.topic)
),
grab AS (
    UPDATE neuron_tasks.topic_slots AS s
    SET holder = p.id, acquired_at = now()
    FROM picked p JOIN free_slots f ON f.topic = p.topic AND f.rn = p.rn
    WHERE s.topic = f.topic AND s.slot = f.slot
    RETURNING s.holder
)
UPDATE neuron_tasks.messages AS m
SET state = 'running',
    lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease_s)s * interval '1 second',
    attempts = m.attempts + 1,
    started_at = now(),
    updated_at = now()
FROM picked
WHERE m.id = picked.id
RETURNING m.id, m.priority, m.eta, m.payload, m.attempts, m.deaths, m.topic,
          m.id IN (SELECT holder FROM grab) AS has_slot;

-- name: claim_waiting
-- Claim up to `room` ready messages of each topic in `topics` (arrays of equal length) for this
-- worker WITHOUT a topic slot: they wait in the worker, which holds slots of those topics, for a
-- slot one of its own jobs hands over when it ends (`hand_over_slots`), so that a slot goes from
-- one job to the next without a result write and a new claim between them. Tenants blocked by
-- their rate limit are left alone, as in `dequeue`.
WITH RECURSIVE tenants AS (
    (SELECT coalesce(tenant, '') AS t FROM neuron_tasks.messages
     WHERE queue_name = %(queue_name)s AND state IN ('pending', 'retrying')
     ORDER BY coalesce(tenant, '') LIMIT 1)
    UNION ALL
    SELECT (SELECT coalesce(m.tenant, '') FROM neuron_tasks.messages m
            WHERE m.queue_name = %(queue_name)s AND m.state IN ('pending', 'retrying')
              AND coalesce(m.tenant, '') > tenants.t
            ORDER BY coalesce(m.tenant, '') LIMIT 1)
    FROM tenants WHERE tenants.t IS NOT NULL
),
open_tenants AS (
    SELECT t FROM tenants
    WHERE t IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM neuron_tasks.tenant_buckets b WHERE b.tenant = tenants.t AND b.blocked_until > now())
),
want AS (
    SELECT w.topic, w.n FROM unnest(%(topics)s::text[], %(room)s::int[]) AS w(topic, n)
),
candidates AS (
    SELECT c.id, c.topic, c.priority, c.eta FROM open_tenants o CROSS JOIN LATERAL (
        SELECT m.id, m.topic, m.priority, m.eta FROM neuron_tasks.messages m
        WHERE m.queue_name = %(queue_name)s AND coalesce(m.tenant, '') = o.t
          AND m.state IN ('pending', 'retrying') AND m.eta <= now() AND m.topic = ANY(%(topics)s::text[])
        ORDER BY m.priority, m.eta, m.id
        LIMIT (SELECT sum(n) FROM want)
        FOR UPDATE SKIP LOCKED) AS c
),
picked AS (
    SELECT r.id FROM (
        SELECT c.id, c.topic, row_number() OVER (PARTITION BY c.topic ORDER BY c.priority, c.eta, c.id) AS rn
        FROM candidates c) AS r
    JOIN want w ON w.topic = r.topic
    WHERE r.rn <= w.n
)
UPDATE neuron_tasks.messages AS m
SET state = 'running',
    lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease_s)s * interval '1 second',
    attempts = m.attempts + 1,
    started_at = now(),
    updated_at = now()
FROM picked
WHERE m.id = picked.id
RETURNING m.id, m.priority, m.eta, m.payload, m.attempts, m.deaths, m.topic, false AS has_slot;

-- name: next_eta
-- Seconds until the next message of a queue is due (NULL when none waits), and until the first
-- rate-limited tenant may run again (a due message may be waiting for that). The first eta is read
-- as ORDER BY ... LIMIT 1, one index entry whatever the planner believes of the queue's size (a
-- min() over a queue the statistics think empty counted every waiting entry).
SELECT extract(epoch FROM ((SELECT m.eta FROM neuron_tasks.messages m
                            WHERE m.queue_name = %(queue_name)s AND m.state IN ('pending', 'retrying')
                            ORDER BY m.eta LIMIT 1) - clock_timestamp()))::float8 AS due_s,
       (SELECT extract(epoch FROM (min(b.blocked_until) - clock_timestamp()))::float8
        FROM neuron_tasks.tenant_buckets b WHERE b.blocked_until > now()) AS blocked_s;

-- name: ack
-- Finished: remove from the hot table, keep a history row with the payload's first 2,048 bytes
-- (the dashboard shows the arguments from them). Returns the ids recorded (an id missing was no
-- longer this worker's: another worker took it over after its lease expired).
WITH done AS (
    DELETE FROM neuron_tasks.messages
    WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s AND state = 'running'
    RETURNING id, message_id, queue_name, actor_name, tenant, topic, priority,
              attempts, retries, enqueued_at, started_at, substring(payload FROM 1 FOR 2048) AS payload_head)
INSERT INTO neuron_tasks.messages_history
    (id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
     enqueued_at, started_at, worker_id, payload_head)
SELECT id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
       enqueued_at, started_at, %(owner)s, payload_head FROM done
RETURNING id;

-- name: durable_commit
-- The completer's connection commits without waiting for the WAL flush; this transaction waits.
SELECT set_config('synchronous_commit', 'on', true);

-- name: flush_commits
-- One commit that waits for the WAL flush (it takes a transaction id, so it writes a commit
-- record): every earlier commit of the server, acks written without waiting, is then durable.
SELECT set_config('synchronous_commit', 'on', true), pg_current_xact_id();

-- name: retry
-- Failed but retryable: back to the queue after a backoff, with the updated message.
UPDATE neuron_tasks.messages
SET state = 'retrying',
    payload = %(payload)s,
    eta = now() + %(delay_ms)s * interval '1 millisecond',
    retries = retries + 1,
    lease_owner = NULL,
    lease_expires_at = NULL,
    last_error = %(error)s,
    errors = errors || %(entry)s::jsonb,
    updated_at = now()
WHERE id = %(id)s AND lease_owner = %(owner)s
RETURNING id;

-- name: nack
-- Failed for good: a dead letter with its error and traceback.
UPDATE neuron_tasks.messages
SET state = 'failed',
    failed_at = now(),
    lease_owner = NULL,
    lease_expires_at = NULL,
    last_error = %(error)s,
    errors = errors || %(entry)s::jsonb,
    updated_at = now()
WHERE id = %(id)s AND (lease_owner = %(owner)s OR %(owner)s::uuid IS NULL)
RETURNING id;

-- name: defer
-- Not run now (a tenant or topic limit): back to the queue until `delay_ms` from now, without
-- counting an attempt or a retry.
UPDATE neuron_tasks.messages
SET state = CASE WHEN retries > 0 THEN 'retrying' ELSE 'pending' END,
    eta = now() + %(delay_ms)s * interval '1 millisecond',
    attempts = greatest(attempts - 1, 0),
    throttled = throttled + 1,
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = now()
WHERE id = %(id)s AND lease_owner = %(owner)s
RETURNING id;

-- name: release
-- Give claimed messages back to the queue (worker shutdown, consumer restart), and their slots.
WITH back AS (
    UPDATE neuron_tasks.messages
    SET state = CASE WHEN retries > 0 THEN 'retrying' ELSE 'pending' END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s AND state = 'running'
    RETURNING id, queue_name),
freed AS (
    UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
    WHERE holder IN (SELECT id FROM back))
SELECT queue_name FROM back;

-- name: release_owner
-- Give back every message a worker still holds (its broker is closing), and their slots.
WITH back AS (
    UPDATE neuron_tasks.messages
    SET state = CASE WHEN retries > 0 THEN 'retrying' ELSE 'pending' END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    WHERE lease_owner = %(owner)s AND state = 'running'
    RETURNING id, queue_name),
freed AS (
    UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
    WHERE holder IN (SELECT id FROM back))
SELECT queue_name FROM back;

-- name: hand_over_slots
-- Finished messages hand their topic slots to messages of the same worker that waited for one
-- (`claim_waiting`; pairs of arrays); returns the new holders that got their slot.
UPDATE neuron_tasks.topic_slots AS s SET holder = h.new_holder, acquired_at = now()
FROM unnest(%(old)s::bigint[], %(new)s::bigint[]) AS h(old_holder, new_holder)
WHERE s.holder = h.old_holder
RETURNING h.new_holder;

-- name: free_slots
-- Messages that finished, failed, retry or wait give their topic slots back (completer batch).
UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
WHERE holder = ANY(%(ids)s);

-- name: ack_with_slots
-- Acks of a process holding topic slots, in one statement (one round trip, its own transaction,
-- no flush): the finished messages as `ack` does, their slots handed to the messages of the same
-- worker that wait for one (pairs of arrays, `old` to `new`), and the slots of `free` given back.
-- The caller keeps the three apart: a slot handed over is not in `free`. Returns ('acked', id)
-- per row recorded, ('moved', new holder) per slot handed over, ('freed', NULL) per slot given
-- back.
WITH done AS (
    DELETE FROM neuron_tasks.messages
    WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s AND state = 'running'
    RETURNING id, message_id, queue_name, actor_name, tenant, topic, priority,
              attempts, retries, enqueued_at, started_at, substring(payload FROM 1 FOR 2048) AS payload_head),
acked AS (
    INSERT INTO neuron_tasks.messages_history
        (id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
         enqueued_at, started_at, worker_id, payload_head)
    SELECT id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
           enqueued_at, started_at, %(owner)s, payload_head FROM done
    RETURNING id),
moved AS (
    UPDATE neuron_tasks.topic_slots AS s SET holder = h.new_holder, acquired_at = now()
    FROM unnest(%(old)s::bigint[], %(new)s::bigint[]) AS h(old_holder, new_holder)
    WHERE s.holder = h.old_holder
    RETURNING h.new_holder),
freed AS (
    UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
    WHERE holder = ANY(%(free)s)
    RETURNING 1)
SELECT 'acked' AS kind, id FROM acked
UNION ALL SELECT 'moved', new_holder FROM moved
UNION ALL SELECT 'freed', NULL::bigint FROM freed;

-- name: notify
-- Wake workers listening on a queue.
SELECT pg_notify('neuron_tasks', %(queue_name)s);

-- name: listen_queues
-- A worker's listener: NOTIFY payloads on this channel are the names of queues with new messages.
LISTEN neuron_tasks;

-- name: listen_settings
-- A worker's listener: a runtime setting changed (`neuron-tasks config set`).
LISTEN neuron_tasks_settings;

-- name: renew_leases
-- Heartbeat: extend the leases of every message this worker holds, expired ones included (after
-- an outage, before any sweeper may reclaim them), except those whose result could not be
-- written or that were taken over before they started (`abandoned`: left to expire). The rows
-- returned are still this worker's: a claimed message not yet started may run (see keeper.py).
UPDATE neuron_tasks.messages
SET lease_expires_at = now() + %(lease_s)s * interval '1 second'
WHERE lease_owner = %(owner)s AND state = 'running' AND id <> ALL(%(abandoned)s::bigint[])
RETURNING id;

-- name: server_epoch
-- When the server last started, for the sweeper's rule (see maintenance.py): the postmaster's
-- start, or the checkpointer's when later (a crash restart restarts every process but the
-- postmaster), or the WAL writer's when later still: it starts only once the server accepts
-- writes, so a standby promoted after running for days counts as started at its promotion.
-- Those processes' starts are visible to superusers and pg_read_all_stats only (NULL otherwise:
-- the postmaster's start alone).
SELECT e.started_at, extract(epoch FROM now() - e.started_at)::float8 AS up_s
FROM (SELECT greatest(pg_postmaster_start_time(),
                      (SELECT max(backend_start) FROM pg_stat_activity
                       WHERE backend_type IN ('checkpointer', 'walwriter'))) AS started_at) AS e;

-- name: register_worker
-- A worker process starts.
INSERT INTO neuron_tasks.workers (worker_id, worker_name, host, pid, queues, heartbeat_s)
VALUES (%(owner)s, %(worker_name)s, %(host)s, %(pid)s, %(queues)s, %(heartbeat_s)s)
ON CONFLICT (worker_id) DO UPDATE
SET queues = excluded.queues, heartbeat_at = now(), stopped_at = NULL;

-- name: heartbeat_worker
-- A worker process is alive; counters are totals since it started.
UPDATE neuron_tasks.workers
SET heartbeat_at = now(),
    queues = %(queues)s,
    jobs_processed = %(processed)s,
    jobs_failed = %(failed)s,
    runtime_ms = %(runtime_ms)s,
    last_run = coalesce(%(last_run)s, last_run)
WHERE worker_id = %(owner)s;

-- name: stop_worker
-- A worker process shut down cleanly.
UPDATE neuron_tasks.workers SET stopped_at = now(), heartbeat_at = now() WHERE worker_id = %(owner)s;

-- name: reclaim_expired
-- Sweeper: messages whose worker stopped heartbeating go back to the queue, or, once their
-- workers have died more than their max_retries times holding them, to the dead letters (poison).
-- A message's max_retries is the one its worker recorded before running it again after a crash
-- (poison_mark_started: message > topic > actor), else `max_deaths` (the max_retries setting);
-- at least 1, so a message always gets one re-run after a crash.
-- A first death is counted for every message the worker held; later ones only for messages the
-- worker proved it had started (started_attempt), so messages that were merely prefetched next
-- to a poison job are not condemned with it. `owner` (else NULL): only that worker's messages (its
-- supervisor saw it die: nothing to wait for).
WITH expired AS (
    SELECT id,
           deaths + CASE WHEN deaths = 0 OR started_attempt = attempts THEN 1 ELSE 0 END AS new_deaths,
           greatest(coalesce(max_retries, %(max_deaths)s), 1) AS max_deaths
    FROM neuron_tasks.messages
    WHERE state = 'running' AND lease_expires_at < now()
      AND (%(owner)s::uuid IS NULL OR lease_owner = %(owner)s::uuid)
    ORDER BY lease_expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED)
UPDATE neuron_tasks.messages AS m
SET deaths = e.new_deaths,
    state = CASE WHEN e.new_deaths > e.max_deaths THEN 'failed'
                 WHEN m.retries > 0 THEN 'retrying' ELSE 'pending' END,
    failed_at = CASE WHEN e.new_deaths > e.max_deaths THEN now() END,
    last_error = CASE WHEN e.new_deaths > e.max_deaths
                      THEN format('PoisonMessage: its worker died %%s times while running it (max_retries %%s)',
                                  e.new_deaths, e.max_deaths)
                      ELSE m.last_error END,
    errors = m.errors || jsonb_build_array(jsonb_build_object(
        'at', now(), 'attempt', m.attempts, 'type', 'neuron_tasks.errors.WorkerDied',
        'message', format('worker %%s stopped heartbeating (lease expired)', m.lease_owner),
        'traceback', '')),
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = now()
FROM expired AS e
WHERE m.id = e.id
RETURNING m.id, m.queue_name, m.state;

-- name: trim_history
-- Retention of finished-message history.
DELETE FROM neuron_tasks.messages_history
WHERE finished_at < now() - %(retention_s)s * interval '1 second';

-- name: trim_dead_letters
-- Retention of dead letters.
DELETE FROM neuron_tasks.messages
WHERE state = 'failed' AND failed_at < now() - %(retention_s)s * interval '1 second';

-- name: live_count
-- Messages of a queue not yet finished or dead (join).
SELECT count(*) AS live FROM neuron_tasks.messages
WHERE queue_name = %(queue_name)s AND state IN ('pending', 'retrying', 'running');

-- name: dead_letter_errors_since
-- The newest error of each message dead-lettered on a queue since a time (join fail_fast).
SELECT message_id, errors -> -1 AS error FROM neuron_tasks.messages
WHERE queue_name = %(queue_name)s AND state = 'failed' AND failed_at >= %(since)s
ORDER BY failed_at, id;

-- name: flush_queues
-- Drop every message, dead letters included, of the given queues (tests).
DELETE FROM neuron_tasks.messages WHERE queue_name = ANY(%(queues)s);

-- name: dead_letter_payloads
-- Dead letters of the given queues, oldest first.
SELECT id, payload FROM neuron_tasks.messages
WHERE queue_name = ANY(%(queues)s) AND state = 'failed'
ORDER BY failed_at, id;

-- name: queue_counts
-- Live messages per queue and state, from the counters the database keeps (schema/014: a few rows
-- per queue, whatever the backlog), and when the pending message due first was enqueued (the
-- first entries of messages_eta_idx).
SELECT c.queue_name,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'pending'), 0)::bigint  AS pending,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'running'), 0)::bigint  AS running,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'retrying'), 0)::bigint AS retrying,
       coalesce(sum(c.n) FILTER (WHERE c.state = 'failed'), 0)::bigint   AS failed,
       (SELECT m.enqueued_at FROM neuron_tasks.messages m
        WHERE m.queue_name = c.queue_name AND m.state IN ('pending', 'retrying') AND m.state = 'pending'
        ORDER BY m.eta LIMIT 1) AS oldest_pending
FROM neuron_tasks.queue_counters c
GROUP BY c.queue_name
HAVING sum(c.n) <> 0;

-- name: list_workers
-- Worker processes (worker_status(): status, counters, host, pid, queues, heartbeat age), newest first.
SELECT * FROM neuron_tasks.worker_status()
WHERE status <> 'stopped' OR heartbeat_at > now() - interval '1 hour';

-- name: list_dead_letters
-- Dead letters, newest first, filtered by queue / actor / tenant / minimum age.
SELECT id, message_id, queue_name, actor_name, tenant, attempts, retries, deaths,
       enqueued_at, failed_at, last_error
FROM neuron_tasks.messages
WHERE state = 'failed'
  AND (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
  AND (%(actor_name)s::text IS NULL OR actor_name = %(actor_name)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
  AND (%(older_than_s)s::float8 IS NULL OR failed_at < now() - %(older_than_s)s * interval '1 second')
ORDER BY failed_at DESC, id DESC
LIMIT %(limit)s;

-- name: get_message_by_id
-- One message by row id, with its payload and every error (primary key).
SELECT id, message_id, queue_name, actor_name, state, priority, eta, tenant, topic, deadline,
       attempts, retries, deaths, lease_owner, enqueued_at, started_at, failed_at, last_error,
       errors, payload
FROM neuron_tasks.messages
WHERE id = %(id)s;

-- name: get_message
-- One message by message id, with its payload and every error (messages_message_id_idx).
SELECT id, message_id, queue_name, actor_name, state, priority, eta, tenant, topic, deadline,
       attempts, retries, deaths, lease_owner, enqueued_at, started_at, failed_at, last_error,
       errors, payload
FROM neuron_tasks.messages
WHERE message_id = %(key)s
ORDER BY id DESC
LIMIT 1;

-- name: requeue_dead_letter
-- A dead letter back to pending with its counters reset and a cleaned payload.
UPDATE neuron_tasks.messages
SET state = 'pending', payload = %(payload)s, attempts = 0, retries = 0, deaths = 0,
    eta = now(), failed_at = NULL, updated_at = now()
WHERE id = %(id)s AND state = 'failed'
RETURNING queue_name;

-- name: purge_dead_letters
-- Delete dead letters, optionally of one queue and older than an age.
DELETE FROM neuron_tasks.messages
WHERE state = 'failed'
  AND (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
  AND (%(older_than_s)s::float8 IS NULL OR failed_at < now() - %(older_than_s)s * interval '1 second');
