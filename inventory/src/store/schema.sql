-- The inventory schema. Every function here that guards an invariant says so.

CREATE FUNCTION uuid_v7() RETURNS uuid AS $$
    -- 48 bits of Unix milliseconds over a random UUID, then version bits 0111.
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$ LANGUAGE sql VOLATILE;

CREATE FUNCTION rfc3339(t timestamptz) RETURNS text AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$ LANGUAGE sql IMMUTABLE;

CREATE TABLE stores (
    store_id text PRIMARY KEY,
    name text NOT NULL,
    latitude double precision NOT NULL,
    longitude double precision NOT NULL,
    timezone text NOT NULL,
    pickup_enabled boolean NOT NULL,
    low_stock_threshold bigint NOT NULL CHECK (low_stock_threshold >= 0),
    pickup_window_hours bigint NOT NULL CHECK (pickup_window_hours > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stock_levels (
    store_id text NOT NULL REFERENCES stores (store_id),
    sku text NOT NULL,
    on_hand bigint NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    safety_stock bigint NOT NULL DEFAULT 0 CHECK (safety_stock >= 0),
    revision bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, sku)
);

-- The append-only ledger: sum(on_hand_delta) = on_hand and sum(reserved_delta) = reserved.
CREATE TABLE movements (
    id bigserial NOT NULL,
    store_id text NOT NULL,
    sku text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('receipt', 'adjustment', 'count', 'sale', 'return',
                                        'reserve', 'release', 'expire', 'commit')),
    quantity bigint NOT NULL,
    on_hand_delta bigint NOT NULL,
    reserved_delta bigint NOT NULL,
    revision bigint NOT NULL,
    reference text,
    actor text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- One index, serving the ledger pages of a level (every index costs WAL on each change).
    PRIMARY KEY (store_id, sku, id)
);

CREATE TABLE reservations (
    id uuid PRIMARY KEY,
    -- No foreign key: the store is checked before reserving, and a key check would lock
    -- the store row (WAL and multixacts) on every reservation.
    store_id text NOT NULL,
    channel text NOT NULL,
    reference text NOT NULL,
    owner text NOT NULL,
    order_id uuid,
    status text NOT NULL CHECK (status IN ('active', 'committed', 'released', 'expired')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz
);
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'active';

-- One line per SKU: lines of a cart naming one SKU twice are added up before reserving.
CREATE TABLE reservation_lines (
    -- Written with its reservation, by the same function; no key-check lock needed.
    reservation_id uuid NOT NULL,
    store_id text NOT NULL,
    sku text NOT NULL,
    quantity bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);
CREATE INDEX reservation_lines_by_level ON reservation_lines (store_id, sku);

-- Insert-only, so flagging never locks a reservation row (no lock-order cycle with commit).
CREATE TABLE reservation_risks (
    reservation_id uuid NOT NULL,
    sku text NOT NULL,
    short_by bigint NOT NULL,
    flagged_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reservation_id, sku)
);

CREATE FUNCTION stock_status(available bigint, threshold bigint) RETURNS text AS $$
    SELECT CASE WHEN available <= 0 THEN 'out_of_stock'
                WHEN available <= threshold THEN 'low_stock'
                ELSE 'in_stock' END
$$ LANGUAGE sql IMMUTABLE;

-- Writes one event to the outbox, in the caller's transaction.
CREATE FUNCTION enqueue_event(p_type text, p_aggregate text, p_data jsonb,
                              p_correlation uuid, p_causation uuid) RETURNS void AS $$
DECLARE
    event_id uuid := uuid_v7();
BEGIN
    INSERT INTO outbox (id, aggregate, routing_key, payload)
    VALUES (event_id, p_aggregate, p_type, jsonb_build_object(
        'id', event_id, 'type', p_type, 'version', 1, 'occurred_at', rfc3339(clock_timestamp()),
        'source', 'inventory', 'correlation_id', coalesce(p_correlation, event_id),
        'causation_id', p_causation, 'data', p_data));
END $$ LANGUAGE plpgsql;

-- After a level row changed: its ledger row and its stock.changed event (which every
-- replica's availability view and SSE streams follow once the relay publishes it).
-- No NOTIFY here: PostgreSQL serializes the commits of notifying transactions.
CREATE FUNCTION record_change(lvl stock_levels, p_kind text, p_quantity bigint,
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
        jsonb_build_object('store_id', lvl.store_id, 'sku', lvl.sku, 'on_hand', lvl.on_hand,
                           'reserved', lvl.reserved, 'safety_stock', lvl.safety_stock,
                           'available', avail, 'status', stock_status(avail, threshold),
                           'revision', lvl.revision, 'updated_at', rfc3339(lvl.updated_at)),
        p_correlation, p_causation);
END $$ LANGUAGE plpgsql;

-- When on_hand is under reserved (a POS sale, a count, a commit after those), flag the
-- newest active reservations of that SKU until the shortfall is covered; one whose share
-- of the shortfall grows is flagged again with the larger figure.
CREATE FUNCTION flag_at_risk(lvl stock_levels, p_correlation uuid) RETURNS void AS $$
DECLARE
    shortfall bigint := lvl.reserved - lvl.on_hand;
    line record;
    short bigint;
BEGIN
    IF shortfall <= 0 THEN
        RETURN;
    END IF;
    FOR line IN
        SELECT l.reservation_id, l.quantity, r.order_id, coalesce(k.short_by, 0) AS flagged
        FROM reservation_lines l
        JOIN reservations r ON r.id = l.reservation_id
        LEFT JOIN reservation_risks k ON k.reservation_id = l.reservation_id AND k.sku = l.sku
        WHERE l.store_id = lvl.store_id AND l.sku = lvl.sku AND r.status = 'active'
        ORDER BY r.created_at DESC, r.id DESC
    LOOP
        EXIT WHEN shortfall <= 0;
        short := least(line.quantity, shortfall);
        IF short > line.flagged THEN
            INSERT INTO reservation_risks (reservation_id, sku, short_by)
            VALUES (line.reservation_id, lvl.sku, short)
            ON CONFLICT (reservation_id, sku)
            DO UPDATE SET short_by = excluded.short_by, flagged_at = now();
            PERFORM enqueue_event('inventory.reservation.at_risk', 'reservation:' || line.reservation_id,
                jsonb_build_object('reservation_id', line.reservation_id, 'order_id', line.order_id,
                                   'store_id', lvl.store_id, 'sku', lvl.sku, 'short_by', short),
                p_correlation, NULL);
        END IF;
        shortfall := shortfall - short;
    END LOOP;
END $$ LANGUAGE plpgsql;

-- One stock movement that is not a reservation: receipt, return, sale, adjustment, count.
-- Returns NULL when an adjustment would take on_hand below zero (the caller answers 409).
CREATE FUNCTION move_stock(p_store text, p_sku text, p_kind text, p_quantity bigint,
                           p_safety_stock bigint, p_reference text, p_actor text,
                           p_correlation uuid) RETURNS stock_levels AS $$
DECLARE
    lvl stock_levels;
    delta bigint;
BEGIN
    INSERT INTO stock_levels (store_id, sku) VALUES (p_store, p_sku) ON CONFLICT DO NOTHING;
    SELECT * INTO lvl FROM stock_levels WHERE store_id = p_store AND sku = p_sku FOR UPDATE;
    delta := CASE p_kind
        WHEN 'receipt' THEN p_quantity
        WHEN 'return' THEN p_quantity
        WHEN 'adjustment' THEN p_quantity
        WHEN 'count' THEN p_quantity - lvl.on_hand
        -- A sale takes goods in hand and is never refused; the count floors at zero.
        WHEN 'sale' THEN -least(p_quantity, lvl.on_hand)
    END;
    IF delta IS NULL THEN
        RAISE EXCEPTION 'unknown movement kind %', p_kind;
    END IF;
    IF lvl.on_hand + delta < 0 THEN
        RETURN NULL;
    END IF;
    UPDATE stock_levels
    SET on_hand = on_hand + delta,
        safety_stock = coalesce(p_safety_stock, safety_stock),
        revision = revision + 1,
        updated_at = clock_timestamp()
    WHERE store_id = p_store AND sku = p_sku
    RETURNING * INTO lvl;
    PERFORM record_change(lvl, p_kind, p_quantity, delta, 0, p_reference, p_actor,
                          p_correlation, NULL);
    PERFORM flag_at_risk(lvl, p_correlation);
    RETURN lvl;
END $$ LANGUAGE plpgsql;

-- Many counts and receipts in one transaction (the caller sorts them by store and SKU, so
-- two bulk imports lock rows in the same order).
CREATE FUNCTION move_stock_bulk(p_stores text[], p_skus text[], p_kinds text[],
                                p_quantities bigint[], p_reference text, p_actor text,
                                p_correlation uuid) RETURNS bigint AS $$
DECLARE
    i int;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_stores, 1), 0) LOOP
        PERFORM move_stock(p_stores[i], p_skus[i], p_kinds[i], p_quantities[i], NULL,
                           p_reference, p_actor, p_correlation);
    END LOOP;
    RETURN coalesce(array_length(p_stores, 1), 0);
END $$ LANGUAGE plpgsql;

CREATE FUNCTION reservation_json(r reservations) RETURNS jsonb AS $$
    SELECT jsonb_build_object(
        'id', r.id, 'status', r.status, 'store_id', r.store_id,
        'lines', coalesce((SELECT jsonb_agg(jsonb_build_object('sku', l.sku, 'quantity', l.quantity)
                                            ORDER BY l.sku)
                           FROM reservation_lines l WHERE l.reservation_id = r.id), '[]'::jsonb),
        'channel', r.channel, 'reference', r.reference, 'order_id', r.order_id,
        'expires_at', rfc3339(r.expires_at), 'created_at', rfc3339(r.created_at),
        'ended_at', CASE WHEN r.ended_at IS NULL THEN NULL ELSE rfc3339(r.ended_at) END,
        'at_risk', EXISTS (SELECT 1 FROM reservation_risks k WHERE k.reservation_id = r.id))
$$ LANGUAGE sql STABLE;

-- Reserves every line or none, in one statement.
-- outcome: 'created' (body = the reservation), 'short' (body = shortages, nothing changed),
-- or an idempotency state from idem_begin ('replay', 'mismatch', 'running').
-- p_skus must be distinct and sorted: rows are locked in (store, sku) order so two carts
-- can't deadlock.
CREATE FUNCTION reserve(p_id uuid, p_store text, p_skus text[], p_quantities bigint[],
                        p_channel text, p_reference text, p_owner text, p_order_id uuid,
                        p_ttl_seconds bigint, p_correlation uuid, p_causation uuid,
                        p_idem_caller text, p_idem_key text, p_idem_hash text,
                        OUT outcome text, OUT status int, OUT body jsonb,
                        OUT levels jsonb) AS $$
DECLARE
    n int := array_length(p_skus, 1);
    i int;
    lvl stock_levels;
    lvls stock_levels[] := '{}';
    locked text[];
    short jsonb := '[]'::jsonb;
    r reservations;
BEGIN
    IF p_idem_key IS NOT NULL THEN
        SELECT b.state, b.status, b.body INTO outcome, status, body
        FROM idem_begin(p_idem_caller, p_idem_key, p_idem_hash) b;
        IF outcome <> 'proceed' THEN
            RETURN;
        END IF;
    END IF;
    IF n > 1 THEN
        -- Lock every line's row first, in (store, sku) byte order like every other writer,
        -- and check them all before changing any. A row that did not exist when locking
        -- counts as nothing available (it may have appeared since, unlocked).
        SELECT coalesce(array_agg(k.sku), '{}') INTO locked
        FROM (SELECT sku FROM stock_levels
              WHERE store_id = p_store AND sku = ANY (p_skus)
              ORDER BY sku COLLATE "C" FOR UPDATE) k;
        SELECT coalesce(jsonb_agg(jsonb_build_object('sku', w.sku, 'requested', w.qty,
                                                     'available', coalesce(w.avail, 0))
                                  ORDER BY w.sku COLLATE "C"), '[]'::jsonb)
        INTO short
        FROM (SELECT q.sku, q.qty, greatest(0, s.on_hand - s.reserved - s.safety_stock) AS avail
              FROM unnest(p_skus, p_quantities) AS q (sku, qty)
              LEFT JOIN stock_levels s ON s.store_id = p_store AND s.sku = q.sku
                                      AND s.sku = ANY (locked)) w
        WHERE coalesce(w.avail, 0) < w.qty;
        IF jsonb_array_length(short) > 0 THEN
            outcome := 'short';
            status := 409;
            body := short;
            RETURN;
        END IF;
    END IF;
    FOR i IN 1 .. n LOOP
        -- The no-oversell guard: under READ COMMITTED this re-checks availability after
        -- waiting on the row lock, so concurrent reservations never take more than there is.
        UPDATE stock_levels
        SET reserved = reserved + p_quantities[i], revision = revision + 1,
            updated_at = clock_timestamp()
        WHERE store_id = p_store AND sku = p_skus[i]
          AND on_hand - reserved - safety_stock >= p_quantities[i]
        RETURNING * INTO lvl;
        IF NOT FOUND THEN
            IF n > 1 THEN
                -- Checked under lock above, so this cannot happen; abort rather than half-reserve.
                RAISE EXCEPTION 'line % changed under lock', p_skus[i];
            END IF;
            -- A single-line cart: nothing has changed yet.
            SELECT jsonb_build_array(jsonb_build_object('sku', p_skus[i], 'requested', p_quantities[i],
                       'available', coalesce((SELECT greatest(0, s.on_hand - s.reserved - s.safety_stock)
                                              FROM stock_levels s
                                              WHERE s.store_id = p_store AND s.sku = p_skus[i]), 0)))
            INTO short;
            outcome := 'short';
            status := 409;
            body := short;
            RETURN;
        END IF;
        lvls := lvls || lvl;
    END LOOP;
    INSERT INTO reservations (id, store_id, channel, reference, owner, order_id, status, expires_at)
    VALUES (p_id, p_store, p_channel, p_reference, p_owner, p_order_id, 'active',
            now() + make_interval(secs => p_ttl_seconds))
    RETURNING * INTO r;
    INSERT INTO reservation_lines (reservation_id, store_id, sku, quantity)
    SELECT p_id, p_store, q.sku, q.qty FROM unnest(p_skus, p_quantities) AS q (sku, qty);
    FOR i IN 1 .. n LOOP
        PERFORM record_change(lvls[i], 'reserve', p_quantities[i], 0, p_quantities[i],
                              p_reference, p_owner, p_correlation, p_causation);
    END LOOP;
    body := reservation_json(r);
    -- The life-cycle events of a reservation are for the order saga: a checkout hold
    -- that serves no order yet has no reader for them (its stock.changed events tell the
    -- rest), and each event is an outbox row on the hot path.
    IF p_order_id IS NOT NULL THEN
        PERFORM enqueue_event('inventory.reservation.confirmed', 'reservation:' || p_id,
            jsonb_build_object('reservation_id', p_id, 'order_id', p_order_id, 'store_id', p_store,
                               'lines', body -> 'lines', 'expires_at', body -> 'expires_at'),
            p_correlation, p_causation);
    END IF;
    IF p_idem_key IS NOT NULL THEN
        PERFORM idem_finish(p_idem_caller, p_idem_key, p_idem_hash, 201, body);
    END IF;
    outcome := 'created';
    status := 201;
    levels := to_jsonb(lvls);
END $$ LANGUAGE plpgsql;

-- Ends an active reservation: 'committed' (goods left: on_hand and reserved drop),
-- 'released' or 'expired' (reserved drops). Returns {reservation, levels} (the levels it
-- changed), or NULL when it was not active: the
-- conditional update on status is what makes every transition, and every return of
-- stock, happen once.
CREATE FUNCTION end_reservation(p_id uuid, p_status text, p_actor text, p_correlation uuid,
                                p_causation uuid) RETURNS jsonb AS $$
DECLARE
    r reservations;
    line record;
    lvl stock_levels;
    taken bigint;
    lvls stock_levels[] := '{}';
    kind text := CASE p_status WHEN 'committed' THEN 'commit'
                               WHEN 'released' THEN 'release'
                               WHEN 'expired' THEN 'expire' END;
    body jsonb;
BEGIN
    IF kind IS NULL THEN
        RAISE EXCEPTION 'unknown end status %', p_status;
    END IF;
    UPDATE reservations SET status = p_status, ended_at = clock_timestamp()
    WHERE id = p_id AND status = 'active'
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    FOR line IN SELECT l.sku, l.quantity FROM reservation_lines l
                WHERE l.reservation_id = p_id ORDER BY l.sku COLLATE "C" LOOP
        IF kind = 'commit' THEN
            SELECT least(line.quantity, s.on_hand) INTO taken FROM stock_levels s
            WHERE s.store_id = r.store_id AND s.sku = line.sku FOR UPDATE;
            UPDATE stock_levels
            SET on_hand = on_hand - taken, reserved = reserved - line.quantity,
                revision = revision + 1, updated_at = clock_timestamp()
            WHERE store_id = r.store_id AND sku = line.sku
            RETURNING * INTO lvl;
            PERFORM record_change(lvl, kind, line.quantity, -taken, -line.quantity,
                                  r.reference, p_actor, p_correlation, p_causation);
            -- Taking goods another reservation counted on leaves that one short: say so.
            PERFORM flag_at_risk(lvl, p_correlation);
            lvls := lvls || lvl;
        ELSE
            UPDATE stock_levels
            SET reserved = reserved - line.quantity, revision = revision + 1,
                updated_at = clock_timestamp()
            WHERE store_id = r.store_id AND sku = line.sku
            RETURNING * INTO lvl;
            PERFORM record_change(lvl, kind, line.quantity, 0, -line.quantity,
                                  r.reference, p_actor, p_correlation, p_causation);
            lvls := lvls || lvl;
        END IF;
    END LOOP;
    body := reservation_json(r);
    IF r.order_id IS NOT NULL THEN
        PERFORM enqueue_event('inventory.reservation.' || p_status, 'reservation:' || p_id,
            jsonb_build_object('reservation_id', p_id, 'order_id', r.order_id,
                               'store_id', r.store_id, 'lines', body -> 'lines'),
            p_correlation, p_causation);
    END IF;
    RETURN jsonb_build_object('reservation', body, 'levels', to_jsonb(lvls));
END $$ LANGUAGE plpgsql;

-- Expires one due reservation (any replica may call this concurrently: SKIP LOCKED hands
-- each one to a single sweeper, and end_reservation's guard makes it happen once).
CREATE FUNCTION expire_one_due() RETURNS jsonb AS $$
DECLARE
    due uuid;
BEGIN
    SELECT id INTO due FROM reservations
    WHERE status = 'active' AND expires_at <= now()
    ORDER BY expires_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF due IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN end_reservation(due, 'expired', 'system:expiry-sweeper', NULL, NULL);
END $$ LANGUAGE plpgsql;

-- Creates or updates a store and announces it.
CREATE FUNCTION upsert_store(p_store text, p_name text, p_lat double precision,
                             p_lon double precision, p_tz text, p_pickup boolean,
                             p_threshold bigint, p_window bigint, p_correlation uuid)
RETURNS stores AS $$
DECLARE
    s stores;
BEGIN
    INSERT INTO stores (store_id, name, latitude, longitude, timezone, pickup_enabled,
                        low_stock_threshold, pickup_window_hours)
    VALUES (p_store, p_name, p_lat, p_lon, p_tz, p_pickup, p_threshold, p_window)
    ON CONFLICT (store_id) DO UPDATE
    SET name = excluded.name, latitude = excluded.latitude, longitude = excluded.longitude,
        timezone = excluded.timezone, pickup_enabled = excluded.pickup_enabled,
        low_stock_threshold = excluded.low_stock_threshold,
        pickup_window_hours = excluded.pickup_window_hours, updated_at = now()
    RETURNING * INTO s;
    PERFORM enqueue_event('inventory.store.upserted', 'store:' || p_store,
        jsonb_build_object('store_id', s.store_id, 'name', s.name, 'latitude', s.latitude,
                           'longitude', s.longitude, 'timezone', s.timezone,
                           'pickup_enabled', s.pickup_enabled,
                           'low_stock_threshold', s.low_stock_threshold,
                           'pickup_window_hours', s.pickup_window_hours),
        p_correlation, NULL);
    RETURN s;
END $$ LANGUAGE plpgsql;
