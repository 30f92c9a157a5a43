-- `neuron-tasks demo` (neuron_tasks/demo).

-- name: demo_enqueue_add
-- Enqueue the demo's `add` actor from SQL, in the caller's transaction.
SELECT neuron_tasks.enqueue('demo', 'add', %(args)s) AS message_id;
