-- What the dashboard's pages chart over time and no table kept: how often each tenant was
-- throttled per minute, and how many LLM cache entries were removed per hour. Both are written by
-- triggers, so no code path changes; each fires only on those events (a throttle, a delete). Each
-- keeps itself short: the statement that starts a new minute (hour) deletes the rows past two
-- days (thirty days) through the primary key.

-- Throttles per tenant and minute (the tenants page's chart), from tenant_buckets.throttled.
CREATE TABLE neuron_tasks.tenant_throttles (
    tenant text        NOT NULL,
    minute timestamptz NOT NULL,
    n      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, minute)
);

-- Runs while the bucket row is locked by the statement that throttled it, so one tenant's
-- throttles are counted one at a time; nothing else locks tenant_throttles rows but a trim.
CREATE FUNCTION neuron_tasks.count_tenant_throttle_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    added bigint := NEW.throttled - CASE WHEN TG_OP = 'UPDATE' THEN OLD.throttled ELSE 0 END;
    fresh boolean;
BEGIN
    IF added > 0 THEN
        INSERT INTO neuron_tasks.tenant_throttles (tenant, minute, n)
        VALUES (NEW.tenant, date_trunc('minute', now()), added)
        ON CONFLICT (tenant, minute) DO UPDATE SET n = neuron_tasks.tenant_throttles.n + excluded.n
        RETURNING xmax = 0 INTO fresh;
        IF fresh THEN  -- a new minute: drop this tenant's rows past two days
            DELETE FROM neuron_tasks.tenant_throttles
             WHERE tenant = NEW.tenant AND minute < now() - interval '2 days';
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenant_buckets_throttled_insert AFTER INSERT ON neuron_tasks.tenant_buckets
    FOR EACH ROW WHEN (NEW.throttled > 0) EXECUTE FUNCTION neuron_tasks.count_tenant_throttle_v1();
CREATE TRIGGER tenant_buckets_throttled_update AFTER UPDATE OF throttled ON neuron_tasks.tenant_buckets
    FOR EACH ROW WHEN (NEW.throttled > OLD.throttled) EXECUTE FUNCTION neuron_tasks.count_tenant_throttle_v1();

-- LLM cache entries removed per hour (expired or evicted by rotation, or cleared), the LLM cache
-- page's chart: one row per deleting statement's hour, from its transition table.
CREATE TABLE neuron_tasks.llm_cache_removals (
    hour    timestamptz PRIMARY KEY,
    entries bigint      NOT NULL DEFAULT 0,
    bytes   bigint      NOT NULL DEFAULT 0
);

CREATE FUNCTION neuron_tasks.count_llm_cache_removals_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fresh boolean;
BEGIN
    INSERT INTO neuron_tasks.llm_cache_removals AS r (hour, entries, bytes)
    SELECT date_trunc('hour', now()), count(*), coalesce(sum(o.bytes), 0) FROM gone o HAVING count(*) > 0
    ON CONFLICT (hour) DO UPDATE SET entries = r.entries + excluded.entries, bytes = r.bytes + excluded.bytes
    RETURNING xmax = 0 INTO fresh;
    IF fresh THEN  -- a new hour: drop the rows past thirty days
        DELETE FROM neuron_tasks.llm_cache_removals WHERE hour < now() - interval '30 days';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER llm_cache_removals AFTER DELETE ON neuron_tasks.llm_cache
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.count_llm_cache_removals_v1();
