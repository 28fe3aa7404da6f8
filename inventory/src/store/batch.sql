-- Reservations in groups (migration m0102): the service hands every reservation request
-- that arrived while its previous group was committing to one call, so one commit (one
-- WAL flush) carries many reservations (BENCHMARKS.md: the disk, not the CPU, limits a
-- reservation made alone).
--
-- Each request is still all-or-nothing on its own: `reserve` changes nothing when it
-- answers 'short' or an idempotency state, and checks every line under lock before
-- changing any. Rows are locked in (store, sku) byte order across the whole group, like
-- every other writer, so two groups (or a group and a release) can't deadlock: requests
-- of one line run in that order; when some request has several lines, every row the
-- group names is locked first, in that order.
--
-- p_requests: a JSON array of {id, store_id, skus (distinct, sorted), quantities,
-- channel, reference, owner, order_id, ttl_seconds, correlation, causation, idem_caller,
-- idem_key, idem_hash}. One row per request, `idx` its 1-based position in the array.
-- A key sent twice in one group answers 'running' the second time (the first is still
-- in flight: 409), since the group's transaction already holds the key's advisory lock.
CREATE FUNCTION reserve_batch(p_requests jsonb)
RETURNS TABLE (idx int, outcome text, status int, body jsonb, levels jsonb) AS $$
DECLARE
    req record;
    seen text[] := '{}';
    idem text;
    res record;
BEGIN
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_requests) e
               WHERE jsonb_array_length(e -> 'skus') > 1) THEN
        PERFORM 1 FROM stock_levels s
        WHERE (s.store_id, s.sku) IN (
            SELECT e ->> 'store_id', k.sku
            FROM jsonb_array_elements(p_requests) e,
                 jsonb_array_elements_text(e -> 'skus') AS k (sku))
        ORDER BY s.store_id COLLATE "C", s.sku COLLATE "C"
        FOR UPDATE;
    END IF;
    FOR req IN
        SELECT e.value AS r, e.ordinality::int AS i
        FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS e
        ORDER BY (e.value ->> 'store_id') COLLATE "C", (e.value -> 'skus' ->> 0) COLLATE "C",
                 e.ordinality
    LOOP
        idx := req.i;
        idem := CASE WHEN req.r ->> 'idem_key' IS NOT NULL
                     THEN (req.r ->> 'idem_caller') || chr(31) || (req.r ->> 'idem_key') END;
        IF idem IS NOT NULL AND idem = ANY (seen) THEN
            outcome := 'running';
            status := NULL;
            body := NULL;
            levels := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF idem IS NOT NULL THEN
            seen := seen || idem;
        END IF;
        SELECT * INTO res FROM reserve(
            (req.r ->> 'id')::uuid, req.r ->> 'store_id',
            ARRAY(SELECT t.k FROM jsonb_array_elements_text(req.r -> 'skus') WITH ORDINALITY AS t (k, n)
                  ORDER BY t.n),
            ARRAY(SELECT t.q::bigint
                  FROM jsonb_array_elements_text(req.r -> 'quantities') WITH ORDINALITY AS t (q, n)
                  ORDER BY t.n),
            req.r ->> 'channel', req.r ->> 'reference', req.r ->> 'owner',
            (req.r ->> 'order_id')::uuid, (req.r ->> 'ttl_seconds')::bigint,
            (req.r ->> 'correlation')::uuid, (req.r ->> 'causation')::uuid,
            req.r ->> 'idem_caller', req.r ->> 'idem_key', req.r ->> 'idem_hash');
        outcome := res.outcome;
        status := res.status;
        body := res.body;
        levels := res.levels;
        RETURN NEXT;
    END LOOP;
END $$ LANGUAGE plpgsql;
