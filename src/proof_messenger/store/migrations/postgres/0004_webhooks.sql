-- Webhooks: subscriptions and one delivery row per (outbox event, subscription).
-- The audit transaction writes only the outbox row; the delivery worker expands it here.

CREATE TABLE webhook_subscriptions (
    id            text PRIMARY KEY,
    url           text NOT NULL,
    events        text NOT NULL,            -- JSON array of event types
    secret_key_id text NOT NULL,            -- master key that encrypted the secret
    secret_ct     bytea NOT NULL,            -- nonce || AES-256-GCM(secret), aad = id
    source        text NOT NULL CHECK (source IN ('api', 'config')),
    created_at    double precision NOT NULL,
    deleted_at    double precision
);

CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY,       -- stable UUID per (event, subscription)
    outbox_id       bigint NOT NULL REFERENCES outbox (id),
    subscription_id text NOT NULL REFERENCES webhook_subscriptions (id),
    event_type      text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      double precision NOT NULL,
    window_start    double precision NOT NULL,          -- give-up clock: creation, or last replay
    next_attempt_at double precision NOT NULL,
    lease_owner     text,
    lease_until     double precision,
    delivered_at    double precision,
    last_status     integer,
    last_error      text,
    UNIQUE (outbox_id, subscription_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_sub ON webhook_deliveries (subscription_id, created_at);
