-- The command line's own statements (neuron_tasks/cli).

-- name: cli_enqueue
-- `neuron-tasks enqueue`: one message by actor name, through SQL as an application could; answers its id.
SELECT neuron_tasks.enqueue(%(queue)s, %(actor)s, %(args)s, %(kwargs)s, %(options)s) AS message_id;
