-- Proof-Messenger relay schema v1 (PostgreSQL dialect; keep in step with sqlite/0001_initial.sql).
-- Audit times are integer microseconds (time_us): they are hashed, and floats are not canonical.
-- Other timestamps are double precision seconds (round-trip exactly).

CREATE TABLE keys (
    kid                text PRIMARY KEY,
    sub                text NOT NULL,
    alg                text NOT NULL,
    public_key         bytea NOT NULL,
    label              text,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at         double precision NOT NULL,
    revoked_at         double precision,
    revoke_reason      text,
    sign_count         bigint NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
    transports         text[] NOT NULL DEFAULT '{}',
    attestation_format text
);
CREATE INDEX keys_sub ON keys (sub);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    scopes      text[] NOT NULL DEFAULT '{}',
    created_at  double precision NOT NULL,
    revoked_at  double precision
);

CREATE TABLE replay (
    digest      bytea PRIMARY KEY,
    accepted_at bigint NOT NULL,  -- microseconds
    event_id    text NOT NULL
);

CREATE TABLE audit (
    seq            bigint PRIMARY KEY CHECK (seq >= 1),
    event_id       text NOT NULL UNIQUE,
    time_us        bigint NOT NULL,
    event_type     text NOT NULL,
    status         text NOT NULL CHECK (status IN ('accepted', 'rejected', 'info')),
    sub            text,
    kid            text,
    tx_type        text,
    amount_minor   bigint,
    currency       text,
    error_code     text,
    proof_id       text,
    client_ip      text,
    user_agent     text,
    detail         text,
    context_key_id text,
    context_ct     bytea,
    prev_hash      bytea NOT NULL,
    entry_hash     bytea NOT NULL
);
CREATE INDEX audit_time ON audit (time_us);
CREATE INDEX audit_sub ON audit (sub, seq);
CREATE INDEX audit_type ON audit (event_type, seq);
CREATE INDEX audit_status ON audit (status, seq);

CREATE TABLE chain_head (
    id         integer PRIMARY KEY CHECK (id = 1),
    seq        bigint NOT NULL,
    entry_hash bytea NOT NULL
);
INSERT INTO chain_head (id, seq, entry_hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL REFERENCES audit (event_id),
    event_type      text NOT NULL,
    payload         bytea NOT NULL,
    created_at      double precision NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    delivered_at    double precision,
    last_error      text
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX outbox_event ON outbox (event_id);
