-- The send path's statements (core/producer.py, core/sender.py), by name.  Loaded by neuron_tasks/sql.py.
-- Parameters are psycopg named placeholders; nothing here is built from user input.

-- name: insert_message
-- Enqueue one message; the INSERT trigger counts it and NOTIFYs listening workers. A unique job
-- whose fingerprint is already pending, running or retrying is not inserted (no row returned).
INSERT INTO neuron_tasks.messages
    (message_id, queue_name, actor_name, priority, eta, tenant, topic, deadline, fingerprint, payload)
VALUES (%(message_id)s, %(queue_name)s, %(actor_name)s, %(priority)s,
        now() + %(delay_ms)s * interval '1 millisecond',
        %(tenant)s, %(topic)s, %(deadline)s, %(fingerprint)s, %(payload)s)
ON CONFLICT (fingerprint) WHERE fingerprint IS NOT NULL AND state IN ('pending', 'running', 'retrying')
DO NOTHING
RETURNING id;

-- name: insert_messages
-- Enqueue many messages in one statement (arrays of equal length, kept in their order); returns
-- the message ids inserted (unique jobs already live, or twice in the arrays, are skipped).
INSERT INTO neuron_tasks.messages
    (message_id, queue_name, actor_name, priority, eta, tenant, topic, deadline, fingerprint, payload)
SELECT m.message_id, m.queue_name, m.actor_name, m.priority,
       now() + m.delay_ms * interval '1 millisecond', m.tenant, m.topic, m.deadline, m.fingerprint, m.payload
FROM unnest(%(message_id)s::text[], %(queue_name)s::text[], %(actor_name)s::text[],
            %(priority)s::integer[], %(delay_ms)s::bigint[], %(tenant)s::text[],
            %(topic)s::text[], %(deadline)s::timestamptz[], %(fingerprint)s::text[], %(payload)s::bytea[])
     AS m(message_id, queue_name, actor_name, priority, delay_ms, tenant, topic, deadline, fingerprint, payload)
ON CONFLICT (fingerprint) WHERE fingerprint IS NOT NULL AND state IN ('pending', 'running', 'retrying')
DO NOTHING
RETURNING message_id;

-- name: insert_message_rows
-- `insert_messages` for a small group (a group commit of concurrent sends): the messages as rows of
-- VALUES, scalar parameters being quicker to send than arrays. `{rows}` stands for one
-- "(%s::text, ...)" per message (`ROW_PLACEHOLDERS`, repeated by the sender): no value is written
-- into the text.
INSERT INTO neuron_tasks.messages
    (message_id, queue_name, actor_name, priority, eta, tenant, topic, deadline, fingerprint, payload)
SELECT m.message_id, m.queue_name, m.actor_name, m.priority,
       now() + m.delay_ms * interval '1 millisecond', m.tenant, m.topic, m.deadline, m.fingerprint, m.payload
FROM (VALUES {rows})
     AS m(message_id, queue_name, actor_name, priority, delay_ms, tenant, topic, deadline, fingerprint, payload)
ON CONFLICT (fingerprint) WHERE fingerprint IS NOT NULL AND state IN ('pending', 'running', 'retrying')
DO NOTHING
RETURNING message_id;

-- name: copy_messages
-- Bulk enqueue of messages that are neither unique nor delayed (eta defaults to now()): binary
-- COPY, one statement; the INSERT trigger counts them and NOTIFYs once per queue.
COPY neuron_tasks.messages (message_id, queue_name, actor_name, priority, tenant, topic, deadline, payload)
FROM STDIN (FORMAT BINARY);

-- name: live_by_fingerprint
-- The live message holding a unique job's fingerprint.
SELECT message_id FROM neuron_tasks.messages
WHERE fingerprint = %(fingerprint)s AND state IN ('pending', 'running', 'retrying');

-- name: waiting_count
-- Waiting messages (pending and retrying) of a queue, from the counters the database keeps.
SELECT neuron_tasks.waiting_v1(%(queue_name)s) AS waiting;
