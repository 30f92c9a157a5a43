-- neuron_tasks.reset_setting() says whether a runtime value was there to remove (it said true
-- every time: the notification it sends afterwards set FOUND again). CREATE OR REPLACE keeps the
-- function's owner and grants.
CREATE OR REPLACE FUNCTION neuron_tasks.reset_setting(p_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_removed boolean;
BEGIN
    DELETE FROM neuron_tasks.settings WHERE key = p_key;
    v_removed := FOUND;
    PERFORM pg_notify('neuron_tasks_settings', p_key);
    RETURN v_removed;
END;
$$;
