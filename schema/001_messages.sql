-- 001: the message table (hot path), finished-message history, worker registry.  Applied by `neuron-tasks db upgrade`.

-- Live messages: pending, running, retrying, and dead letters (failed).
-- Finished messages are deleted from here and summarised in messages_history.
CREATE TABLE neuron_tasks.messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       text        NOT NULL,
    queue_name       text        NOT NULL,
    actor_name       text        NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'retrying', 'failed')),
    priority         integer     NOT NULL DEFAULT 0,          -- lower runs first
    eta              timestamptz NOT NULL DEFAULT now(),      -- not before (delay, backoff)
    tenant           text,
    topic            text,
    deadline         timestamptz,
    fingerprint      text,
    attempts         integer     NOT NULL DEFAULT 0,          -- times claimed by a worker
    retries          integer     NOT NULL DEFAULT 0,          -- failed runs retried
    deaths           integer     NOT NULL DEFAULT 0,          -- times its worker died holding it
    lease_owner      uuid,
    lease_expires_at timestamptz,
    payload          bytea       NOT NULL,                    -- the Dramatiq-encoded message
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    failed_at        timestamptz,
    last_error       text,
    errors           jsonb       NOT NULL DEFAULT '[]'::jsonb  -- every attempt's error and traceback
) WITH (fillfactor = 90,
        autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_threshold = 500,
        autovacuum_analyze_scale_factor = 0.05);

-- Dequeue: the next ready messages of a queue by priority then age.
CREATE INDEX messages_ready_idx ON neuron_tasks.messages (queue_name, priority, eta, id)
    WHERE state IN ('pending', 'retrying');
-- When is the next delayed message of a queue due?
CREATE INDEX messages_eta_idx ON neuron_tasks.messages (queue_name, eta)
    WHERE state IN ('pending', 'retrying');
-- Lease renewal by the owning worker, and the sweeper of dead workers' messages.
CREATE INDEX messages_lease_owner_idx ON neuron_tasks.messages (lease_owner)
    WHERE state = 'running';
CREATE INDEX messages_lease_expiry_idx ON neuron_tasks.messages (lease_expires_at)
    WHERE state = 'running';
-- Dead letters by queue and age.
CREATE INDEX messages_failed_idx ON neuron_tasks.messages (queue_name, failed_at)
    WHERE state = 'failed';
CREATE INDEX messages_message_id_idx ON neuron_tasks.messages (message_id);

-- Finished messages (no payload): throughput, latency, `status`; trimmed by retention.
CREATE TABLE neuron_tasks.messages_history (
    id           bigint      NOT NULL,
    message_id   text        NOT NULL,
    queue_name   text        NOT NULL,
    actor_name   text        NOT NULL,
    tenant       text,
    topic        text,
    priority     integer     NOT NULL,
    attempts     integer     NOT NULL,
    retries      integer     NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    worker_id    uuid
) WITH (autovacuum_vacuum_scale_factor = 0.05);
CREATE INDEX messages_history_finished_idx ON neuron_tasks.messages_history (finished_at);
CREATE INDEX messages_history_queue_idx ON neuron_tasks.messages_history (queue_name, finished_at);

-- Worker processes: registration and heartbeat (their leases live on messages).
CREATE TABLE neuron_tasks.workers (
    worker_id      uuid PRIMARY KEY,
    worker_name    text        NOT NULL,
    host           text        NOT NULL,
    pid            integer     NOT NULL,
    queues         text[]      NOT NULL DEFAULT '{}',
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    stopped_at     timestamptz,
    jobs_processed bigint      NOT NULL DEFAULT 0,
    jobs_failed    bigint      NOT NULL DEFAULT 0,
    runtime_ms     double precision NOT NULL DEFAULT 0,
    last_run       timestamptz
);

-- Wake listening workers once per statement and queue (LISTEN neuron_tasks).
CREATE FUNCTION neuron_tasks.notify_enqueued_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT DISTINCT queue_name FROM new_rows LOOP
        PERFORM pg_notify('neuron_tasks', q);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_notify_insert
    AFTER INSERT ON neuron_tasks.messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.notify_enqueued_v1();

-- neuron_tasks.enqueue() (enqueue from SQL) is defined in 002, with the topics and unique jobs it checks.
