-- The order saga (migration m0101): one reservation per order, orders that must not be
-- reserved for any more, and the adoption of a checkout hold by its order.

-- Guards "one reservation per order", whatever handles `orders.order.placed` (a
-- redelivery under another envelope id, a second replica, a service's POST naming the
-- order). Partial: checkout holds and POS reservations (no order) add no index entry, so
-- the hot reservation path writes no more WAL than before (BENCHMARKS.md).
CREATE UNIQUE INDEX reservations_by_order ON reservations (order_id)
    WHERE order_id IS NOT NULL;

-- Orders for which nothing may be reserved any more: cancelled or expired before their
-- `placed` was handled (the tombstone a late `placed` finds), or rejected (a second
-- `placed` of a rejected order must not confirm it behind the orders service's back).
CREATE TABLE ended_orders (
    order_id uuid PRIMARY KEY,
    outcome text NOT NULL CHECK (outcome IN ('cancelled', 'expired', 'rejected')),
    at timestamptz NOT NULL DEFAULT now()
);

-- Hands a checkout hold to its order: the hold must be active and in time, at p_store,
-- owned by p_owner, serve no order yet, and hold exactly p_skus/p_quantities (distinct,
-- sorted). Then it serves the order, its expiry is pushed to at least now + p_ttl_seconds,
-- and `inventory.reservation.confirmed` names it. Returns the reservation, or NULL when
-- the hold does not qualify (the caller then reserves afresh). Its stock stays reserved:
-- no level changes, so no ledger row.
CREATE FUNCTION adopt_hold(p_id uuid, p_order_id uuid, p_store text, p_owner text,
                           p_skus text[], p_quantities bigint[], p_ttl_seconds bigint,
                           p_correlation uuid, p_causation uuid) RETURNS jsonb AS $$
DECLARE
    r reservations;
    body jsonb;
BEGIN
    -- Lines are written with their reservation and never change: compare them unlocked.
    IF (SELECT jsonb_agg(jsonb_build_object('sku', l.sku, 'quantity', l.quantity)
                         ORDER BY l.sku COLLATE "C")
        FROM reservation_lines l WHERE l.reservation_id = p_id)
       IS DISTINCT FROM
       (SELECT jsonb_agg(jsonb_build_object('sku', q.sku, 'quantity', q.qty)
                         ORDER BY q.sku COLLATE "C")
        FROM unnest(p_skus, p_quantities) AS q (sku, qty)) THEN
        RETURN NULL;
    END IF;
    -- One adoption, and never of a hold that is ending: a conditional update on the
    -- current state (a concurrent release or expiry either wins first or waits for us).
    UPDATE reservations
    SET order_id = p_order_id,
        expires_at = greatest(expires_at, now() + make_interval(secs => p_ttl_seconds))
    WHERE id = p_id AND status = 'active' AND order_id IS NULL AND expires_at > now()
      AND store_id = p_store AND owner = p_owner
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    body := reservation_json(r);
    PERFORM enqueue_event('inventory.reservation.confirmed', 'reservation:' || p_id,
        jsonb_build_object('reservation_id', p_id, 'order_id', p_order_id, 'store_id', p_store,
                           'lines', body -> 'lines', 'expires_at', body -> 'expires_at'),
        p_correlation, p_causation);
    RETURN body;
END $$ LANGUAGE plpgsql;
