-- Job results are stored as they are, without compression. A result is written once and read
-- once or twice, and compressing it cost more than it saved: a 100-text embedding result
-- (about 440 KB of JSON floats) took 47-99 ms of server CPU to store with pglz compression and
-- 10-18 ms without (PostgreSQL 15); compact float32 results do not compress at all. Results
-- expire after their TTL (llm_result_ttl_ms, 1 day by default), so the extra space is bounded.
ALTER TABLE neuron_tasks.results ALTER COLUMN value SET STORAGE EXTERNAL;
