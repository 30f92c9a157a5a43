-- Admin statements: cancel messages, purge queues, and what the job asks about its cancel mark.
-- Loaded by neuron_tasks/sql.py. Parameters are psycopg named placeholders; nothing here is built
-- from user input.

-- name: cancel_messages
-- Cancel messages by message id or row id (neuron_tasks.cancel_messages, migration 016).
SELECT cancelled, marked FROM neuron_tasks.cancel_messages(%(ids)s::text[]);

-- name: purge_queue
-- Delete a queue's messages in `states` matching actor and tenant; mark running ones if named.
SELECT purged, marked
FROM neuron_tasks.purge_queue(%(queue_name)s, %(actor_name)s, %(tenant)s, %(states)s::text[]);

-- name: purge_count
-- How many messages a purge with these filters would act on (asked before confirming).
SELECT count(*) FROM neuron_tasks.messages
WHERE queue_name = %(queue_name)s AND state = ANY(%(states)s::text[])
  AND (%(actor_name)s::text IS NULL OR actor_name = %(actor_name)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- name: cancel_requested
-- Whether a running message was marked as cancelled (primary key; no row: it is no longer live).
SELECT cancel_requested_at IS NOT NULL FROM neuron_tasks.messages WHERE id = %(id)s;

-- name: outcome_counts
-- Messages per queue that left the queue finished or cancelled, kept in history (within retention).
SELECT queue_name,
       count(*) FILTER (WHERE outcome = 'finished') AS finished,
       count(*) FILTER (WHERE outcome = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE outcome = 'finished' AND finished_at > now() - interval '1 hour')
           AS finished_last_hour
FROM neuron_tasks.messages_history
GROUP BY queue_name;

-- name: waiting_queue_names
-- Queues with waiting messages (a skip scan of messages_ready_idx), for the purge form.
WITH RECURSIVE names AS (
    (SELECT queue_name FROM neuron_tasks.messages WHERE state IN ('pending', 'retrying')
     ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT m.queue_name FROM neuron_tasks.messages m
            WHERE m.state IN ('pending', 'retrying') AND m.queue_name > names.queue_name
            ORDER BY m.queue_name LIMIT 1)
    FROM names WHERE names.queue_name IS NOT NULL
)
SELECT queue_name FROM names WHERE queue_name IS NOT NULL LIMIT %(limit)s;
