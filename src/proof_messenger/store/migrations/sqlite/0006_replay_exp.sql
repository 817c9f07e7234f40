-- Replay claims keyed by (intent exp, digest) (keep in step with postgres/0006_replay_exp.sql).
-- The digest is a random SHA-256: keyed on it alone, every claim was inserted on a random
-- page of the replay B-tree, and once the table outgrew the page cache each claim wrote a
-- page of its own (~43 of 119 WAL pages per 32-row commit at 100k rows). exp is a field of
-- the same signed intent, so the new key collides exactly when the digest does, and the
-- claims of concurrent proofs sit together at the right edge; expired claims are one range.
--
-- O(1) whatever the table's size: the claims made before this migration are kept as they
-- are (their exp is unknown: only the digest was stored) under the name replay_v1, which
-- nothing writes any more. Every claim and is_claimed also looks the digest up there, so
-- a proof accepted before the upgrade is still refused after it.
ALTER TABLE replay RENAME TO replay_v1;

CREATE TABLE replay (
    exp         INTEGER NOT NULL,  -- the intent's exp, seconds since the epoch
    digest      BLOB NOT NULL,     -- SHA-256 of the domain-separated intent
    accepted_at INTEGER NOT NULL,  -- microseconds
    event_id    TEXT NOT NULL,
    PRIMARY KEY (exp, digest)
) WITHOUT ROWID;
