-- Proof-Messenger relay schema v1 (SQLite dialect; keep in step with postgres/0001_initial.sql).
-- Audit times are integer microseconds (time_us): they are hashed, and floats are not canonical.
-- Other timestamps are REAL seconds (IEEE double, round-trips exactly).

CREATE TABLE keys (
    kid                TEXT PRIMARY KEY,
    sub                TEXT NOT NULL,
    alg                TEXT NOT NULL,
    public_key         BLOB NOT NULL,
    label              TEXT,
    status             TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at         REAL NOT NULL,
    revoked_at         REAL,
    revoke_reason      TEXT,
    sign_count         INTEGER NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
    transports         TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
    attestation_format TEXT
);
CREATE INDEX keys_sub ON keys (sub);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    scopes      TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
    created_at  REAL NOT NULL,
    revoked_at  REAL
);

CREATE TABLE replay (
    digest      BLOB PRIMARY KEY,
    accepted_at INTEGER NOT NULL,  -- microseconds
    event_id    TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit (
    seq            INTEGER PRIMARY KEY CHECK (seq >= 1),
    event_id       TEXT NOT NULL UNIQUE,
    time_us        INTEGER NOT NULL,
    event_type     TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('accepted', 'rejected', 'info')),
    sub            TEXT,
    kid            TEXT,
    tx_type        TEXT,
    amount_minor   INTEGER,
    currency       TEXT,
    error_code     TEXT,
    proof_id       TEXT,
    client_ip      TEXT,
    user_agent     TEXT,
    detail         TEXT,
    context_key_id TEXT,
    context_ct     BLOB,
    prev_hash      BLOB NOT NULL,
    entry_hash     BLOB NOT NULL
);
CREATE INDEX audit_time ON audit (time_us);
CREATE INDEX audit_sub ON audit (sub, seq);
CREATE INDEX audit_type ON audit (event_type, seq);
CREATE INDEX audit_status ON audit (status, seq);

CREATE TABLE chain_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    entry_hash BLOB NOT NULL
);
INSERT INTO chain_head (id, seq, entry_hash) VALUES (1, 0, zeroblob(32));

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL REFERENCES audit (event_id),
    event_type      TEXT NOT NULL,
    payload         BLOB NOT NULL,
    created_at      REAL NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    delivered_at    REAL,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX outbox_event ON outbox (event_id);
