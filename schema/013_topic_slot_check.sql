-- A topic slot's holder must be judged on the row as it is now: when a claim re-checks a slot that
-- a concurrent claim has just taken, a STABLE function would still see the statement's older
-- snapshot and count the slot as free, letting a topic run one job more than its concurrency.
ALTER FUNCTION neuron_tasks.slot_holder_alive_v1(bigint) VOLATILE;
