-- Approval requests and WebAuthn registration ceremonies (keep in step with sqlite/).
-- 0002 belongs to the Merkle log work: the runner applies migrations by name, gaps are fine.

CREATE TABLE approvals (
    id              text PRIMARY KEY,             -- 128-bit random, base64url
    sub             text NOT NULL,
    aud             text NOT NULL,
    nonce           bytea NOT NULL UNIQUE,        -- the intent's nonce: check 8 finds the request by it
    intent_digest   bytea NOT NULL,               -- SHA-256 of the domain-separated intent
    intent_key_id   text NOT NULL,                -- master key that encrypted the intent
    intent_ct       bytea NOT NULL,               -- AES-256-GCM(intent bytes), AAD = id
    page_token_hash bytea NOT NULL,               -- SHA-256 of the approval page token
    created_at      double precision NOT NULL,
    expires_at      double precision NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'approved', 'declined', 'expired')),
    require_uv      boolean NOT NULL DEFAULT false,
    api_key_id      text,
    decided_at      double precision,
    proof_id        text,
    audit_event_id  text,
    user_roles      text                          -- JSON list of roles from a verified user token, or NULL
);
CREATE INDEX approvals_due ON approvals (status, expires_at);

CREATE TABLE webauthn_challenges (
    token_hash   bytea PRIMARY KEY,               -- SHA-256 of the enrolment token
    sub          text NOT NULL,
    challenge    bytea NOT NULL,
    options_json text NOT NULL,
    created_at   double precision NOT NULL,
    expires_at   double precision NOT NULL,
    used         boolean NOT NULL DEFAULT false
);
CREATE INDEX webauthn_challenges_expiry ON webauthn_challenges (expires_at);
