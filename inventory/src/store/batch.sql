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
-- A request of one line (the common case) takes the short road: its guarded UPDATE runs
-- in the loop, and the rows of every such request that was granted (reservation, line,
-- ledger row, stock.changed and reservation events, idempotency row) are written by one
-- INSERT per table for the whole group, with the very contents `reserve` would write; a
-- request of several lines goes through `reserve` itself.
--
-- p_requests: a JSON array of {id, store_id, skus (distinct, sorted), quantities,
-- channel, reference, owner, order_id, ttl_seconds, correlation, causation, idem_caller,
-- idem_key, idem_hash}. One row per request, `idx` its 1-based position in the array.
-- A key that went ahead earlier in the group answers 'running' when sent again in it (the
-- first is still in flight: 409): the group's transaction holds the key's advisory lock,
-- which would let the second through. A replayed or mismatched key changes nothing, so a
-- second use of it in the group gets the same answer from idem_begin.
CREATE FUNCTION reserve_batch(p_requests jsonb)
RETURNS TABLE (idx int, outcome text, status int, body jsonb, levels jsonb) AS $$
DECLARE
    req record;
    seen text[] := '{}';
    idem text;
    res record;
    lvl stock_levels;
    -- The granted one-line requests, in the order their levels changed.
    ok_idx int[] := '{}';
    ok_req jsonb[] := '{}';
    ok_lvl stock_levels[] := '{}';
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
        -- A cart before a one-line request of the same first SKU: carts write their rows at
        -- once, one-line requests at the end, so this keeps ledger and outbox rows in
        -- revision order (a cart's other SKUs all sort after its first).
        ORDER BY (e.value ->> 'store_id') COLLATE "C", (e.value -> 'skus' ->> 0) COLLATE "C",
                 (jsonb_array_length(e.value -> 'skus') > 1) DESC, e.ordinality
    LOOP
        idx := req.i;
        status := NULL;
        body := NULL;
        levels := NULL;
        idem := CASE WHEN req.r ->> 'idem_key' IS NOT NULL
                     THEN (req.r ->> 'idem_caller') || chr(31) || (req.r ->> 'idem_key') END;
        IF idem IS NOT NULL AND idem = ANY (seen) THEN
            outcome := 'running';
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF jsonb_array_length(req.r -> 'skus') > 1 THEN
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
            IF idem IS NOT NULL AND outcome IN ('created', 'short') THEN
                seen := seen || idem;
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF idem IS NOT NULL THEN
            SELECT b.state, b.status, b.body INTO outcome, status, body
            FROM idem_begin(req.r ->> 'idem_caller', req.r ->> 'idem_key', req.r ->> 'idem_hash') b;
            IF outcome <> 'proceed' THEN
                RETURN NEXT;
                CONTINUE;
            END IF;
            seen := seen || idem;
        END IF;
        -- The no-oversell guard, as in `reserve`.
        UPDATE stock_levels s
        SET reserved = s.reserved + (req.r -> 'quantities' ->> 0)::bigint,
            revision = s.revision + 1, updated_at = clock_timestamp()
        WHERE s.store_id = req.r ->> 'store_id' AND s.sku = req.r -> 'skus' ->> 0
          AND s.on_hand - s.reserved - s.safety_stock >= (req.r -> 'quantities' ->> 0)::bigint
        RETURNING s.* INTO lvl;
        IF NOT FOUND THEN
            outcome := 'short';
            status := 409;
            body := jsonb_build_array(jsonb_build_object(
                'sku', req.r -> 'skus' ->> 0,
                'requested', (req.r -> 'quantities' ->> 0)::bigint,
                'available', coalesce((SELECT greatest(0, s.on_hand - s.reserved - s.safety_stock)
                                       FROM stock_levels s
                                       WHERE s.store_id = req.r ->> 'store_id'
                                         AND s.sku = req.r -> 'skus' ->> 0), 0)));
            RETURN NEXT;
            CONTINUE;
        END IF;
        ok_idx := ok_idx || req.i;
        ok_req := ok_req || req.r;
        ok_lvl := ok_lvl || lvl;
    END LOOP;
    IF cardinality(ok_idx) = 0 THEN
        RETURN;
    END IF;

    -- Every granted one-line request at once, in one statement; `n` keeps the order the
    -- levels changed in, so ledger ids and outbox sequence numbers grow with each level's
    -- revision.
    RETURN QUERY
    WITH g AS MATERIALIZED (
        SELECT u.n, u.i, u.r, u.lvl, (u.r -> 'quantities' ->> 0)::bigint AS qty,
               (u.r ->> 'id')::uuid AS id,
               jsonb_build_object(
                   'id', (u.r ->> 'id')::uuid, 'status', 'active', 'store_id', u.r ->> 'store_id',
                   'lines', jsonb_build_array(jsonb_build_object(
                       'sku', u.r -> 'skus' ->> 0, 'quantity', (u.r -> 'quantities' ->> 0)::bigint)),
                   'channel', u.r ->> 'channel', 'reference', u.r ->> 'reference',
                   'order_id', (u.r ->> 'order_id')::uuid,
                   'expires_at', rfc3339(now() + make_interval(secs => (u.r ->> 'ttl_seconds')::bigint)),
                   'created_at', rfc3339(now()), 'ended_at', NULL, 'at_risk', false) AS body,
               uuid_v7() AS event_id,
               CASE WHEN u.r ->> 'order_id' IS NOT NULL THEN uuid_v7() END AS confirmed_id
        FROM (SELECT k AS n, ok_idx[k] AS i, ok_req[k] AS r, ok_lvl[k] AS lvl
              FROM generate_subscripts(ok_idx, 1) AS k) u
    ),
    reservation_rows AS (
        INSERT INTO reservations (id, store_id, channel, reference, owner, order_id, status,
                                  expires_at)
        SELECT g.id, g.r ->> 'store_id', g.r ->> 'channel', g.r ->> 'reference', g.r ->> 'owner',
               (g.r ->> 'order_id')::uuid, 'active',
               now() + make_interval(secs => (g.r ->> 'ttl_seconds')::bigint)
        FROM g ORDER BY g.n
    ),
    line_rows AS (
        INSERT INTO reservation_lines (reservation_id, store_id, sku, quantity)
        SELECT g.id, g.r ->> 'store_id', g.r -> 'skus' ->> 0, g.qty FROM g ORDER BY g.n
    ),
    -- record_change, for each: the ledger row and stock.changed.
    ledger_rows AS (
        INSERT INTO movements (store_id, sku, kind, quantity, on_hand_delta, reserved_delta,
                               revision, reference, actor)
        SELECT (g.lvl).store_id, (g.lvl).sku, 'reserve', g.qty, 0, g.qty, (g.lvl).revision,
               g.r ->> 'reference', g.r ->> 'owner'
        FROM g ORDER BY g.n
    ),
    stock_events AS (
        INSERT INTO outbox (id, aggregate, routing_key, payload)
        SELECT g.event_id, 'stock:' || (g.lvl).store_id || ':' || (g.lvl).sku,
               'inventory.stock.changed', jsonb_build_object(
                   'id', g.event_id, 'type', 'inventory.stock.changed', 'version', 1,
                   'occurred_at', rfc3339(clock_timestamp()), 'source', 'inventory',
                   'correlation_id', coalesce((g.r ->> 'correlation')::uuid, g.event_id),
                   'causation_id', (g.r ->> 'causation')::uuid,
                   'data', jsonb_build_object(
                       'store_id', (g.lvl).store_id, 'sku', (g.lvl).sku,
                       'on_hand', (g.lvl).on_hand, 'reserved', (g.lvl).reserved,
                       'safety_stock', (g.lvl).safety_stock,
                       'available', greatest(0, (g.lvl).on_hand - (g.lvl).reserved
                                                - (g.lvl).safety_stock),
                       'status', stock_status(greatest(0, (g.lvl).on_hand - (g.lvl).reserved
                                                          - (g.lvl).safety_stock),
                                              st.low_stock_threshold),
                       'revision', (g.lvl).revision,
                       'updated_at', rfc3339((g.lvl).updated_at)))
        FROM g LEFT JOIN stores st ON st.store_id = (g.lvl).store_id
        ORDER BY g.n
    ),
    -- The life-cycle event of a reservation that serves an order, as `reserve` writes it.
    confirmed_events AS (
        INSERT INTO outbox (id, aggregate, routing_key, payload)
        SELECT g.confirmed_id, 'reservation:' || g.id, 'inventory.reservation.confirmed',
               jsonb_build_object(
                   'id', g.confirmed_id, 'type', 'inventory.reservation.confirmed', 'version', 1,
                   'occurred_at', rfc3339(clock_timestamp()), 'source', 'inventory',
                   'correlation_id', coalesce((g.r ->> 'correlation')::uuid, g.confirmed_id),
                   'causation_id', (g.r ->> 'causation')::uuid,
                   'data', jsonb_build_object(
                       'reservation_id', g.id, 'order_id', (g.r ->> 'order_id')::uuid,
                       'store_id', g.r ->> 'store_id', 'lines', g.body -> 'lines',
                       'expires_at', g.body -> 'expires_at'))
        FROM g WHERE g.confirmed_id IS NOT NULL ORDER BY g.n
    ),
    idempotency_rows AS (
        INSERT INTO idempotency_keys (caller, key, request_hash, status, body)
        SELECT g.r ->> 'idem_caller', g.r ->> 'idem_key', g.r ->> 'idem_hash', 201, g.body
        FROM g WHERE g.r ->> 'idem_key' IS NOT NULL
    )
    SELECT g.i, 'created'::text, 201, g.body, jsonb_build_array(to_jsonb(g.lvl))
    FROM g ORDER BY g.n;
END $$ LANGUAGE plpgsql;
