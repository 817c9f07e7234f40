-- Approval requests and WebAuthn registration ceremonies (keep in step with postgres/).
-- 0002 belongs to the Merkle log work: the runner applies migrations by name, gaps are fine.

CREATE TABLE approvals (
    id              TEXT PRIMARY KEY,             -- 128-bit random, base64url
    sub             TEXT NOT NULL,
    aud             TEXT NOT NULL,
    nonce           BLOB NOT NULL UNIQUE,         -- the intent's nonce: check 8 finds the request by it
    intent_digest   BLOB NOT NULL,                -- SHA-256 of the domain-separated intent
    intent_key_id   TEXT NOT NULL,                -- master key that encrypted the intent
    intent_ct       BLOB NOT NULL,                -- AES-256-GCM(intent bytes), AAD = id
    page_token_hash BLOB NOT NULL,                -- SHA-256 of the approval page token
    created_at      REAL NOT NULL,
    expires_at      REAL NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'approved', 'declined', 'expired')),
    require_uv      INTEGER NOT NULL DEFAULT 0 CHECK (require_uv IN (0, 1)),
    api_key_id      TEXT,
    decided_at      REAL,
    proof_id        TEXT,
    audit_event_id  TEXT,
    user_roles      TEXT                          -- JSON list of roles from a verified user token, or NULL
);
CREATE INDEX approvals_due ON approvals (status, expires_at);

CREATE TABLE webauthn_challenges (
    token_hash   BLOB PRIMARY KEY,                -- SHA-256 of the enrolment token
    sub          TEXT NOT NULL,
    challenge    BLOB NOT NULL,
    options_json TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    used         INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1))
);
CREATE INDEX webauthn_challenges_expiry ON webauthn_challenges (expires_at);
