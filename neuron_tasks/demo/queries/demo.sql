-- `neuron-tasks demo` (neuron_tasks/demo).

-- name: demo_enqueue_add
-- Enqueue the demo's `add` actor from SQL, in the caller's transaction.
SELECT neuron_tasks.enqueue('demo', 'add', %(args)s) AS message_id;

-- name: demo_queue_counts
-- The demo's queues, counting only messages enqueued since the run began (finished ones from
-- the history): an earlier demo on the same database does not add to them.
SELECT queue_name AS queue,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'retrying') AS retrying,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'finished') AS finished
FROM (SELECT queue_name, state FROM neuron_tasks.messages
      WHERE queue_name = ANY(%(queues)s) AND enqueued_at >= %(since)s
      UNION ALL
      SELECT queue_name, 'finished' FROM neuron_tasks.messages_history
      WHERE queue_name = ANY(%(queues)s) AND enqueued_at >= %(since)s) m
GROUP BY queue_name
ORDER BY queue_name;

-- name: demo_dead_letters
-- The dead letters of this run's demo queues, newest first.
SELECT id, actor_name, retries, last_error
FROM neuron_tasks.messages
WHERE state = 'failed' AND queue_name = ANY(%(queues)s) AND enqueued_at >= %(since)s
ORDER BY failed_at DESC, id DESC
LIMIT %(limit)s;
