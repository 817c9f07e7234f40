-- Policy engine: partial N-of-M approvals of a transaction.
-- One row per (transaction, approving subject): the UNIQUE key is what makes the same
-- approver count once, across every relay instance sharing the database.
CREATE TABLE policy_approvals (
    tx_key   TEXT NOT NULL,  -- base64url SHA-256 of the canonical CBOR context
    sub      TEXT NOT NULL,
    proof_id TEXT NOT NULL,
    rule     TEXT NOT NULL,
    roles    text[] NOT NULL DEFAULT '{}',  -- the approver's verified roles
    at       double precision NOT NULL,
    UNIQUE (tx_key, sub)
);
CREATE INDEX policy_approvals_at ON policy_approvals (at);
