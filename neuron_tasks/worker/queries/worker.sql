-- Worker supervisor (neuron_tasks/worker): what its /metrics reads from the database at each scrape.

-- name: exporter_queue_depth
-- Live messages per queue and state, and how long the oldest pending one has waited.
SELECT queue_name,
       count(*) FILTER (WHERE state = 'pending')  AS pending,
       count(*) FILTER (WHERE state = 'running')  AS running,
       count(*) FILTER (WHERE state = 'retrying') AS retrying,
       count(*) FILTER (WHERE state = 'failed')   AS failed,
       extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE state = 'pending'))::float8 AS oldest_pending_s
FROM neuron_tasks.messages
GROUP BY queue_name;

-- name: exporter_workers_by_status
-- Worker processes by status (running, stale, stopped).
SELECT status, count(*) AS n FROM neuron_tasks.worker_status() GROUP BY status;
