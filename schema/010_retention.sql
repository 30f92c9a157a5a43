-- Retention of token usage: the leader deletes old rows by age, so it needs an index on `at`.
CREATE INDEX IF NOT EXISTS llm_usage_at_idx ON neuron_tasks.llm_usage (at);
