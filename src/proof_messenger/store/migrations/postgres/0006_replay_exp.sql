-- Replay claims keyed by (intent exp, digest) (keep in step with sqlite/0006_replay_exp.sql).
-- The digest is a random SHA-256: keyed on it alone, every claim was inserted on a random
-- leaf of the primary-key index. exp is a field of the same signed intent, so the new key
-- collides exactly when the digest does, and the claims of concurrent proofs sit together
-- at the right edge of the index; expired claims are one key range.
--
-- O(1) whatever the table's size: the claims made before this migration are kept as they
-- are (their exp is unknown: only the digest was stored) under the name replay_v1, which
-- nothing writes any more. Every claim and is_claimed also looks the digest up there, so
-- a proof accepted before the upgrade is still refused after it.
ALTER TABLE replay RENAME TO replay_v1;
ALTER TABLE replay_v1 RENAME CONSTRAINT replay_pkey TO replay_v1_pkey;

CREATE TABLE replay (
    exp         bigint NOT NULL,  -- the intent's exp, seconds since the epoch
    digest      bytea NOT NULL,   -- SHA-256 of the domain-separated intent
    accepted_at bigint NOT NULL,  -- microseconds
    event_id    text NOT NULL,
    PRIMARY KEY (exp, digest)
);
