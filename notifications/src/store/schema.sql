-- The notifications service's tables.

-- The VAPID key pair's private half, generated on first start when
-- WEBPUSH_VAPID_PRIVATE_KEY is not given (one row; replicas starting together keep the
-- first one inserted).
CREATE TABLE vapid_key (
    id smallint PRIMARY KEY CHECK (id = 1),
    private_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The stores we name in messages, kept from inventory.store.upserted.
CREATE TABLE stores (
    store_id text PRIMARY KEY,
    name text NOT NULL,
    timezone text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A customer's devices; the device id is chosen by the app (PUT is an upsert).
CREATE TABLE devices (
    customer_id text NOT NULL,
    device_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('webpush', 'fcm', 'apns')),
    -- Web Push: the push service URL and the browser's keys (base64url).
    endpoint text,
    p256dh text,
    auth text,
    -- FCM registration token or APNs device token.
    token text,
    locale text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, device_id),
    CHECK ((kind = 'webpush') = (endpoint IS NOT NULL AND p256dh IS NOT NULL AND auth IS NOT NULL)),
    CHECK ((kind = 'webpush') = (token IS NULL))
);
-- A subscription or token belongs to one customer at a time (see store::upsert_device).
CREATE INDEX devices_by_endpoint ON devices (endpoint) WHERE endpoint IS NOT NULL;
CREATE INDEX devices_by_token ON devices (kind, token) WHERE token IS NOT NULL;

-- Back-in-stock alerts. Waiting ones are found per (store, SKU) by the partial index, so a
-- stock change looks only at the alerts on its own SKU, and only at those it satisfies.
CREATE TABLE stock_alerts (
    id uuid PRIMARY KEY,
    customer_id text NOT NULL,
    store_id text NOT NULL,
    sku text NOT NULL,
    quantity bigint NOT NULL CHECK (quantity > 0),
    product_name text,
    locale text,
    status text NOT NULL DEFAULT 'waiting' CHECK (status IN ('waiting', 'fired', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    fired_at timestamptz,
    fired_revision bigint
);
CREATE INDEX stock_alerts_waiting ON stock_alerts (store_id, sku, quantity) WHERE status = 'waiting';
CREATE INDEX stock_alerts_of_customer ON stock_alerts (customer_id, created_at, id);

-- The newest revision seen per level: an event at or below it is stale and fires nothing.
CREATE TABLE stock_seen (
    store_id text NOT NULL,
    sku text NOT NULL,
    revision bigint NOT NULL,
    available bigint NOT NULL,
    PRIMARY KEY (store_id, sku)
);

-- One row per (thing to tell, device): the unique key is what makes a redelivered event
-- or a restart push once. Rows are written in the consumer's transaction, before any send;
-- the worker records each attempt's outcome after it.
CREATE TABLE deliveries (
    id uuid PRIMARY KEY,
    -- `order:<order id>:<event type>` or `alert:<alert id>`.
    dedupe_key text NOT NULL,
    customer_id text NOT NULL,
    device_id uuid NOT NULL,
    kind text NOT NULL,
    order_id uuid,
    alert_id uuid,
    -- The store concerned (staff read the log of their stores only).
    store_id text NOT NULL,
    event_type text NOT NULL,
    -- What the message is rendered from (store, code, deadline, SKU…), and the fallback
    -- locale when the device has none.
    context jsonb NOT NULL,
    -- pending: not tried yet; retrying: a transient failure, tried again at
    -- next_attempt_at; sent; failed: not deliverable (device gone, provider disabled);
    -- dead: given up after the last attempt or refused for good.
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'retrying', 'sent', 'failed', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    -- When the next attempt is due; while an attempt is in flight, when its lease ends
    -- (a worker that died mid-send leaves the row to be picked up again then).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    UNIQUE (dedupe_key, device_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX deliveries_of_order ON deliveries (order_id, created_at) WHERE order_id IS NOT NULL;
CREATE INDEX deliveries_of_customer ON deliveries (customer_id, created_at);

-- A time-ordered UUID (version 7) for rows made in set-based statements: the first 48
-- bits are the Unix time in milliseconds, the rest random, version and variant bits set.
CREATE FUNCTION uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
