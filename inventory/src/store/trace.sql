-- Events written by the SQL functions carry the trace of the transaction that wrote them:
-- the consumer sets `clickcollect.traceparent` (transaction-local) before its handler runs,
-- and the relay turns the key beside the body into the AMQP `traceparent` header.
CREATE OR REPLACE FUNCTION enqueue_event(p_type text, p_aggregate text, p_data jsonb,
                                         p_correlation uuid, p_causation uuid) RETURNS void AS $$
DECLARE
    event_id uuid := uuid_v7();
    trace text := nullif(current_setting('clickcollect.traceparent', true), '');
    payload jsonb := jsonb_build_object(
        'id', event_id, 'type', p_type, 'version', 1, 'occurred_at', rfc3339(clock_timestamp()),
        'source', 'inventory', 'correlation_id', coalesce(p_correlation, event_id),
        'causation_id', p_causation, 'data', p_data);
BEGIN
    IF trace IS NOT NULL THEN
        payload := payload || jsonb_build_object('traceparent', trace);
    END IF;
    INSERT INTO outbox (id, aggregate, routing_key, payload)
    VALUES (event_id, p_aggregate, p_type, payload);
END $$ LANGUAGE plpgsql;
