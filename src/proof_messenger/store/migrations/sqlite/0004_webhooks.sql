-- Webhooks: subscriptions and one delivery row per (outbox event, subscription).
-- The audit transaction writes only the outbox row; the delivery worker expands it here.

CREATE TABLE webhook_subscriptions (
    id            TEXT PRIMARY KEY,
    url           TEXT NOT NULL,
    events        TEXT NOT NULL,            -- JSON array of event types
    secret_key_id TEXT NOT NULL,            -- master key that encrypted the secret
    secret_ct     BLOB NOT NULL,            -- nonce || AES-256-GCM(secret), aad = id
    source        TEXT NOT NULL CHECK (source IN ('api', 'config')),
    created_at    REAL NOT NULL,
    deleted_at    REAL
);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,       -- stable UUID per (event, subscription)
    outbox_id       INTEGER NOT NULL REFERENCES outbox (id),
    subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions (id),
    event_type      TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    window_start    REAL NOT NULL,          -- give-up clock: creation, or last replay
    next_attempt_at REAL NOT NULL,
    lease_owner     TEXT,
    lease_until     REAL,
    delivered_at    REAL,
    last_status     INTEGER,
    last_error      TEXT,
    UNIQUE (outbox_id, subscription_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_sub ON webhook_deliveries (subscription_id, created_at);
