-- 005: the dashboard's one index. Dead letters newest first across all queues, so the dead-letter
-- page reads a bounded window in (failed_at, id) order instead of sorting every dead letter.
-- Partial: only failed rows are indexed; the hot path (pending/running) never touches it.
CREATE INDEX messages_dead_letters_idx ON neuron_tasks.messages (failed_at, id)
    WHERE state = 'failed';
