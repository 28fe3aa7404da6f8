-- The orders schema.

-- The stores orders may be placed at: a copy kept from inventory.store.upserted.
CREATE TABLE stores (
    store_id text PRIMARY KEY,
    name text NOT NULL,
    timezone text NOT NULL,
    pickup_enabled boolean NOT NULL,
    pickup_window_hours bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id uuid PRIMARY KEY,
    customer_id text NOT NULL,
    store_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'picking',
                                           'ready_for_pickup', 'collected', 'cancelled',
                                           'expired')),
    lines jsonb NOT NULL,
    total_cents bigint NOT NULL,
    contact jsonb NOT NULL,
    locale text NOT NULL,
    -- The checkout hold named at checkout, then the reservation inventory confirmed.
    hold_id uuid,
    reservation_id uuid,
    shortages jsonb,
    pickup_code text,
    pickup_deadline timestamptz,
    wrong_code_attempts int NOT NULL DEFAULT 0,
    reminder_sent_at timestamptz,
    cancel_reason text,
    at_risk boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- A store's queue (oldest first: ids are UUID v7), and a customer's orders.
CREATE INDEX orders_by_store ON orders (store_id, status, id);
CREATE INDEX orders_by_customer ON orders (customer_id, id);
-- The deadline sweeper's work.
CREATE INDEX orders_due ON orders (pickup_deadline) WHERE status = 'ready_for_pickup';

-- Every transition: from, to, when, who (and why, for cancellations).
CREATE TABLE order_history (
    order_id uuid NOT NULL,
    seq bigserial NOT NULL,
    from_status text,
    to_status text NOT NULL,
    actor text NOT NULL,
    reason text,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, seq)
);
