-- Reservations in groups, set-based (migration m0104; replaces m0102's reserve_batch).
--
-- m0102 ran one UPDATE and one idempotency lookup per request, each a statement of its
-- own: with commits grouped, those statements (executor start and end, plans, JSON
-- lookups) were most of PostgreSQL's time (BENCHMARKS.md). Here a group costs a fixed
-- number of statements, whatever its size:
--   1. the requests and their lines are read once;
--   2. one statement looks up every Idempotency-Key and takes its advisory lock;
--   3. one statement locks every level the proceeding requests name, in (store, sku)
--      byte order like every other writer (so groups, carts and releases can't deadlock);
--   4. the requests are decided in memory, in arrival order, against the locked levels:
--      each one all or nothing, none taking more than there is;
--   5. one statement writes the group (levels, reservations, lines, ledger, idempotency
--      keys, events) and answers.
--
-- Events: one `inventory.stock.changed` per level the group changed, carrying its state
-- at commit and its last revision (no other state of it was ever committed, and readers
-- drop stale revisions anyway), all in one outbox row whose payload is the array of
-- envelopes (the relay publishes each of them). The bundles share the aggregate
-- `stock:*`, so they go out in commit order.
--
-- p_requests: a JSON array of {id, store_id, skus (distinct), quantities, channel,
-- reference, owner, order_id (always null: see below), ttl_seconds, correlation, causation, idem_caller, idem_key,
-- idem_hash}. One answer row per request: idx (its 1-based position), outcome ('created',
-- 'short', or the idempotency states 'replay', 'mismatch', 'running'), the HTTP status,
-- the body (the reservation, the shortages, or the replayed body) and, when created, the
-- levels of its lines as the group left them.
-- A key sent twice in one group answers 'running' the second time when the first went
-- ahead (the group's transaction holds its advisory lock, which would let it through).

-- Declared IMMUTABLE, its body (to_char) is only STABLE, so PostgreSQL never inlined it:
-- every call went through the SQL-function executor.
CREATE OR REPLACE FUNCTION rfc3339(t timestamptz) RETURNS text AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$ LANGUAGE sql STABLE;

-- The shape of every event this service writes (events.md), and of stock.changed's data,
-- written once: `enqueue_event`, `record_change` and the groups below use them. Plain SQL
-- expressions, so PostgreSQL inlines them where they are called.
CREATE FUNCTION event_envelope(p_id uuid, p_type text, p_occurred_at text,
                               p_correlation uuid, p_causation uuid, p_data jsonb)
RETURNS jsonb AS $$
    SELECT jsonb_build_object(
        'id', p_id, 'type', p_type, 'version', 1, 'occurred_at', p_occurred_at,
        'source', 'inventory', 'correlation_id', coalesce(p_correlation, p_id),
        'causation_id', p_causation, 'data', p_data)
$$ LANGUAGE sql STABLE;

CREATE FUNCTION stock_changed_data(p_store text, p_sku text, p_on_hand bigint,
                                   p_reserved bigint, p_safety bigint, p_available bigint,
                                   p_threshold bigint, p_revision bigint, p_updated_at text)
RETURNS jsonb AS $$
    SELECT jsonb_build_object(
        'store_id', p_store, 'sku', p_sku, 'on_hand', p_on_hand, 'reserved', p_reserved,
        'safety_stock', p_safety, 'available', p_available,
        'status', stock_status(p_available, p_threshold), 'revision', p_revision,
        'updated_at', p_updated_at)
$$ LANGUAGE sql STABLE;

CREATE OR REPLACE FUNCTION enqueue_event(p_type text, p_aggregate text, p_data jsonb,
                                         p_correlation uuid, p_causation uuid) RETURNS void AS $$
DECLARE
    event_id uuid := uuid_v7();
    trace text := nullif(current_setting('clickcollect.traceparent', true), '');
    payload jsonb := event_envelope(event_id, p_type, rfc3339(clock_timestamp()),
                                    p_correlation, p_causation, p_data);
BEGIN
    IF trace IS NOT NULL THEN
        payload := payload || jsonb_build_object('traceparent', trace);
    END IF;
    INSERT INTO outbox (id, aggregate, routing_key, payload)
    VALUES (event_id, p_aggregate, p_type, payload);
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION record_change(lvl stock_levels, p_kind text, p_quantity bigint,
                                         p_on_hand_delta bigint, p_reserved_delta bigint,
                                         p_reference text, p_actor text, p_correlation uuid,
                                         p_causation uuid) RETURNS void AS $$
DECLARE
    threshold bigint;
    avail bigint := greatest(0, lvl.on_hand - lvl.reserved - lvl.safety_stock);
BEGIN
    INSERT INTO movements (store_id, sku, kind, quantity, on_hand_delta, reserved_delta,
                           revision, reference, actor)
    VALUES (lvl.store_id, lvl.sku, p_kind, p_quantity, p_on_hand_delta, p_reserved_delta,
            lvl.revision, p_reference, p_actor);
    SELECT s.low_stock_threshold INTO threshold FROM stores s WHERE s.store_id = lvl.store_id;
    PERFORM enqueue_event('inventory.stock.changed', 'stock:' || lvl.store_id || ':' || lvl.sku,
        stock_changed_data(lvl.store_id, lvl.sku, lvl.on_hand, lvl.reserved, lvl.safety_stock,
                           avail, threshold, lvl.revision, rfc3339(lvl.updated_at)),
        p_correlation, p_causation);
END $$ LANGUAGE plpgsql;

-- A group's events are one row of some 30 KB: lz4 packs it in a fraction of pglz's time.
ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;

-- Kept for the daily purge only: a BRIN index costs next to nothing per insert, where the
-- B-tree cost a descent and a leaf write on every reservation.
DROP INDEX idempotency_keys_created;
CREATE INDEX idempotency_keys_created ON idempotency_keys USING brin (created_at);

DROP FUNCTION reserve_batch(jsonb);

CREATE FUNCTION reserve_batch(p_requests jsonb)
RETURNS TABLE (idx int, outcome text, status int, body text, levels text) AS $$
DECLARE
    n int;
    -- The requests, by position.
    r_id uuid[];
    r_store text[];
    r_channel text[];
    r_reference text[];
    r_owner text[];
    r_order uuid[];
    r_ttl bigint[];
    r_corr uuid[];
    r_cause uuid[];
    r_caller text[];
    r_key text[];
    r_hash text[];
    r_first int[];
    r_last int[];
    r_state text[];
    r_status int[];
    r_body text[];
    -- Their lines, request by request: the request, store, SKU, quantity, the locked level
    -- (0: none) and the revision the line left it at.
    l_req int[];
    l_store text[];
    l_sku text[];
    l_qty bigint[];
    l_lvl int[];
    l_rev bigint[];
    -- The locked levels, in lock order, as the group changes them.
    v_store text[];
    v_sku text[];
    v_on_hand bigint[];
    v_reserved bigint[];
    v_safety bigint[];
    v_rev bigint[];
    v_rev0 bigint[];
    v_reserved0 bigint[];
    v_last int[];
    seen text[] := '{}';
    idem text;
    s_hash text;
    s_status int;
    s_body text;
    ok boolean;
    i int;
    j int;
    k int;
    v_now timestamptz := now();
    v_clock timestamptz := clock_timestamp();
    v_now_text text := rfc3339(v_now);
    v_clock_text text := rfc3339(v_clock);
    v_created boolean := false;
BEGIN
    -- 1. The requests, then their lines.
    SELECT count(*)::int,
           array_agg(q.id ORDER BY e.i), array_agg(q.store_id ORDER BY e.i),
           array_agg(q.channel ORDER BY e.i), array_agg(q.reference ORDER BY e.i),
           array_agg(q.owner ORDER BY e.i), array_agg(q.order_id ORDER BY e.i),
           array_agg(q.ttl_seconds ORDER BY e.i), array_agg(q.correlation ORDER BY e.i),
           array_agg(q.causation ORDER BY e.i), array_agg(q.idem_caller ORDER BY e.i),
           array_agg(q.idem_key ORDER BY e.i), array_agg(q.idem_hash ORDER BY e.i)
    INTO n, r_id, r_store, r_channel, r_reference, r_owner, r_order, r_ttl, r_corr, r_cause,
         r_caller, r_key, r_hash
    FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS e (v, i),
         jsonb_to_record(e.v) AS q (id uuid, store_id text, channel text, reference text,
                                    owner text, order_id uuid, ttl_seconds bigint,
                                    correlation uuid, causation uuid, idem_caller text,
                                    idem_key text, idem_hash text);
    IF n = 0 THEN
        RETURN;
    END IF;
    -- The order saga's reservations publish `reservation.confirmed` and may hit the one
    -- reservation per order: they go through `reserve`, one at a time.
    IF EXISTS (SELECT FROM unnest(r_order) AS o WHERE o IS NOT NULL) THEN
        RAISE EXCEPTION 'a reservation naming an order is made alone (reserve), not in a group';
    END IF;
    SELECT coalesce(array_agg(l.i ORDER BY l.i, l.pos), '{}'),
           coalesce(array_agg(l.store_id ORDER BY l.i, l.pos), '{}'),
           coalesce(array_agg(l.sku ORDER BY l.i, l.pos), '{}'),
           coalesce(array_agg(l.qty ORDER BY l.i, l.pos), '{}')
    INTO l_req, l_store, l_sku, l_qty
    FROM (SELECT e.i::int AS i, s.pos, e.v ->> 'store_id' AS store_id, s.sku,
                 (e.v -> 'quantities' ->> (s.pos - 1)::int)::bigint AS qty
          FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS e (v, i),
               jsonb_array_elements_text(e.v -> 'skus') WITH ORDINALITY AS s (sku, pos)) l;
    r_first := array_fill(0, ARRAY[n]);
    r_last := array_fill(-1, ARRAY[n]);
    r_state := array_fill('proceed'::text, ARRAY[n]);
    r_status := array_fill(NULL::int, ARRAY[n]);
    r_body := array_fill(NULL::text, ARRAY[n]);
    l_rev := array_fill(NULL::bigint, ARRAY[cardinality(l_req)]);
    FOR j IN 1 .. cardinality(l_req) LOOP
        IF r_first[l_req[j]] = 0 THEN
            r_first[l_req[j]] := j;
        END IF;
        r_last[l_req[j]] := j;
    END LOOP;

    -- 2. Every key at once: its advisory lock (held until commit), its stored answer.
    FOR i, ok, s_hash, s_status, s_body IN
        SELECT q.i, q.got, stored.request_hash, stored.status, stored.body::text
        FROM (SELECT u.i::int AS i, u.caller, u.key, u.hash,
                     pg_try_advisory_xact_lock(hashtextextended(u.caller || chr(31) || u.key, 7)) AS got
              FROM unnest(r_caller, r_key, r_hash) WITH ORDINALITY AS u (caller, key, hash, i)
              WHERE u.key IS NOT NULL) q
        LEFT JOIN idempotency_keys stored ON stored.caller = q.caller AND stored.key = q.key
    LOOP
        IF NOT ok THEN
            r_state[i] := 'running';
        ELSIF s_hash IS NULL THEN
            r_state[i] := 'proceed';
        ELSIF s_hash <> r_hash[i] THEN
            r_state[i] := 'mismatch';
        ELSE
            r_state[i] := 'replay';
            r_status[i] := s_status;
            r_body[i] := s_body;
        END IF;
    END LOOP;

    -- 3. Every level a proceeding request names, locked in (store, sku) byte order.
    SELECT coalesce(array_agg(lk.store_id ORDER BY lk.store_id COLLATE "C", lk.sku COLLATE "C"), '{}'),
           coalesce(array_agg(lk.sku ORDER BY lk.store_id COLLATE "C", lk.sku COLLATE "C"), '{}'),
           coalesce(array_agg(lk.on_hand ORDER BY lk.store_id COLLATE "C", lk.sku COLLATE "C"), '{}'),
           coalesce(array_agg(lk.reserved ORDER BY lk.store_id COLLATE "C", lk.sku COLLATE "C"), '{}'),
           coalesce(array_agg(lk.safety_stock ORDER BY lk.store_id COLLATE "C", lk.sku COLLATE "C"), '{}'),
           coalesce(array_agg(lk.revision ORDER BY lk.store_id COLLATE "C", lk.sku COLLATE "C"), '{}')
    INTO v_store, v_sku, v_on_hand, v_reserved, v_safety, v_rev
    FROM (SELECT s.store_id, s.sku, s.on_hand, s.reserved, s.safety_stock, s.revision
          FROM stock_levels s
          WHERE (s.store_id, s.sku) IN (
              SELECT u.store, u.sku FROM unnest(l_req, l_store, l_sku) AS u (req, store, sku)
              WHERE r_state[u.req] = 'proceed')
          ORDER BY s.store_id COLLATE "C", s.sku COLLATE "C"
          FOR UPDATE) lk;
    SELECT coalesce(array_agg(coalesce(v.k, 0)::int ORDER BY l.j), '{}')
    INTO l_lvl
    FROM unnest(l_store, l_sku) WITH ORDINALITY AS l (store, sku, j)
    LEFT JOIN unnest(v_store, v_sku) WITH ORDINALITY AS v (store, sku, k)
           ON v.store = l.store AND v.sku = l.sku;
    v_rev0 := v_rev;
    v_reserved0 := v_reserved;
    v_last := array_fill(0, ARRAY[cardinality(v_store)]);

    -- 4. In arrival order: all lines or none. The no-oversell guard is here, on rows
    -- this transaction holds locked.
    FOR i IN 1 .. n LOOP
        IF r_key[i] IS NOT NULL THEN
            idem := r_caller[i] || chr(31) || r_key[i];
            IF idem = ANY (seen) THEN
                r_state[i] := 'running';
                r_status[i] := NULL;
                r_body[i] := NULL;
                CONTINUE;
            END IF;
            IF r_state[i] <> 'proceed' THEN
                CONTINUE;
            END IF;
            seen := seen || idem;
        END IF;
        ok := r_first[i] > 0;
        FOR j IN r_first[i] .. r_last[i] LOOP
            k := l_lvl[j];
            IF k = 0 OR v_on_hand[k] - v_reserved[k] - v_safety[k] < l_qty[j] THEN
                ok := false;
                EXIT;
            END IF;
        END LOOP;
        IF ok THEN
            FOR j IN r_first[i] .. r_last[i] LOOP
                k := l_lvl[j];
                v_reserved[k] := v_reserved[k] + l_qty[j];
                v_rev[k] := v_rev[k] + 1;
                l_rev[j] := v_rev[k];
                v_last[k] := i;
            END LOOP;
            r_state[i] := 'created';
            r_status[i] := 201;
            v_created := true;
        ELSE
            -- Nothing of it changed: every short line, with what is available now.
            r_state[i] := 'short';
            r_status[i] := 409;
            SELECT coalesce(jsonb_agg(jsonb_build_object('sku', w.sku, 'requested', w.qty,
                                                         'available', w.avail)
                                      ORDER BY w.sku COLLATE "C"), '[]'::jsonb)::text
            INTO s_body
            FROM (SELECT l_sku[x] AS sku, l_qty[x] AS qty,
                         CASE WHEN l_lvl[x] = 0 THEN 0
                              ELSE greatest(0, v_on_hand[l_lvl[x]] - v_reserved[l_lvl[x]]
                                               - v_safety[l_lvl[x]]) END AS avail
                  FROM generate_series(r_first[i], r_last[i]) AS x) w
            WHERE w.avail < w.qty;
            r_body[i] := s_body;
        END IF;
    END LOOP;

    -- 5. The group's writes and the answers, in one statement. Nothing is written for a
    -- group that granted nothing.
    RETURN QUERY
    WITH req AS MATERIALIZED (
        SELECT u.i::int AS i, u.id, u.store, u.channel, u.reference, u.owner, u.order_id,
               u.ttl, u.corr, u.cause, u.caller, u.key, u.hash, u.state, u.status, u.body
        FROM unnest(r_id, r_store, r_channel, r_reference, r_owner, r_order, r_ttl, r_corr,
                    r_cause, r_caller, r_key, r_hash, r_state, r_status, r_body)
             WITH ORDINALITY AS u (id, store, channel, reference, owner, order_id, ttl, corr,
                                   cause, caller, key, hash, state, status, body, i)
    ),
    -- The changed levels as the group leaves them.
    lvl AS MATERIALIZED (
        SELECT u.k::int AS k, u.store, u.sku, u.on_hand, u.reserved, u.reserved0, u.safety,
               u.rev, u.rev0, u.last, greatest(0, u.on_hand - u.reserved - u.safety) AS avail
        FROM unnest(v_store, v_sku, v_on_hand, v_reserved, v_reserved0, v_safety, v_rev,
                    v_rev0, v_last)
             WITH ORDINALITY AS u (store, sku, on_hand, reserved, reserved0, safety, rev, rev0,
                                   last, k)
        WHERE v_created AND u.last > 0
    ),
    -- The granted lines, with the revision each left its level at.
    granted AS MATERIALIZED (
        SELECT u.req, u.store, u.sku, u.qty, u.lvl, u.rev
        FROM unnest(l_req, l_store, l_sku, l_qty, l_lvl, l_rev) AS u (req, store, sku, qty, lvl, rev)
        WHERE v_created AND u.rev IS NOT NULL
    ),
    -- The reservations made: as `reservation_json` shows them, and their lines' levels.
    made AS MATERIALIZED (
        SELECT r.*, jsonb_build_object(
                   'id', r.id, 'status', 'active', 'store_id', r.store, 'lines', g.lines,
                   'channel', r.channel, 'reference', r.reference, 'order_id', r.order_id,
                   'expires_at', rfc3339(v_now + make_interval(secs => r.ttl)),
                   'created_at', v_now_text, 'ended_at', NULL, 'at_risk', false) AS made_body,
               g.levels
        FROM req r
        JOIN (SELECT g.req,
                     jsonb_agg(jsonb_build_object('sku', g.sku, 'quantity', g.qty) ORDER BY g.sku) AS lines,
                     jsonb_agg(jsonb_build_object(
                         'store_id', v.store, 'sku', v.sku, 'on_hand', v.on_hand,
                         'reserved', v.reserved, 'safety_stock', v.safety, 'revision', v.rev,
                         'updated_at', v_clock)) AS levels
              FROM granted g JOIN lvl v ON v.k = g.lvl
              GROUP BY g.req) g ON g.req = r.i
    ),
    level_rows AS (
        UPDATE stock_levels s
        SET reserved = s.reserved + (v.reserved - v.reserved0),
            revision = s.revision + (v.rev - v.rev0),
            updated_at = v_clock
        FROM lvl v
        WHERE s.store_id = v.store AND s.sku = v.sku
    ),
    reservation_rows AS (
        INSERT INTO reservations (id, store_id, channel, reference, owner, order_id, status,
                                  expires_at, created_at)
        SELECT m.id, m.store, m.channel, m.reference, m.owner, m.order_id, 'active',
               v_now + make_interval(secs => m.ttl), v_now
        FROM made m
    ),
    line_rows AS (
        INSERT INTO reservation_lines (reservation_id, store_id, sku, quantity)
        SELECT r_id[g.req], g.store, g.sku, g.qty FROM granted g
    ),
    -- Ledger ids grow with each level's revisions.
    ledger_rows AS (
        INSERT INTO movements (store_id, sku, kind, quantity, on_hand_delta, reserved_delta,
                               revision, reference, actor)
        SELECT g.store, g.sku, 'reserve', g.qty, 0, g.qty, g.rev, r_reference[g.req],
               r_owner[g.req]
        FROM granted g
        ORDER BY g.store COLLATE "C", g.sku COLLATE "C", g.rev
    ),
    key_rows AS (
        INSERT INTO idempotency_keys (caller, key, request_hash, status, body)
        SELECT m.caller, m.key, m.hash, 201, m.made_body FROM made m WHERE m.key IS NOT NULL
    ),
    -- One stock.changed per changed level, all in one outbox row.
    bundle_row AS (
        INSERT INTO outbox (id, aggregate, routing_key, payload)
        SELECT uuid_v7(), 'stock:*', 'inventory.stock.changed',
               jsonb_agg(event_envelope(
                   c.event_id, 'inventory.stock.changed', v_clock_text, r_corr[c.last],
                   r_cause[c.last],
                   stock_changed_data(c.store, c.sku, c.on_hand, c.reserved, c.safety, c.avail,
                                      c.threshold, c.rev, v_clock_text))
                         ORDER BY c.k)
        FROM (SELECT v.*, coalesce(st.low_stock_threshold, 0) AS threshold,
                     uuid_v7() AS event_id
              FROM lvl v LEFT JOIN stores st ON st.store_id = v.store) c
        HAVING count(*) > 0
    )
    SELECT r.i, r.state, r.status, coalesce(m.made_body::text, r.body), m.levels::text
    FROM req r LEFT JOIN made m ON m.i = r.i
    ORDER BY r.i;
END $$ LANGUAGE plpgsql;

-- Plans are cached per connection from the first calls, when a fresh database's keys and
-- reservations tables are nearly empty: a join planned then as a sequential scan went on
-- reading the whole growing idempotency table on every group. Every lookup here is by a
-- key, so an index is always the right path.
ALTER FUNCTION reserve_batch(jsonb) SET enable_seqscan = off;
