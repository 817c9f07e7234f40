-- Verifiable audit log (RFC 6962 Merkle tree over the audit chain). Keep in step with
-- sqlite/0002_merkle.sql. Rows that exist before this migration are backfilled in Python
-- (store/_merkle.py) in the same transaction.

-- SHA-256(0x00 || entry_bytes(seq, row)): the Merkle leaf of row seq (leaf index seq - 1).
ALTER TABLE audit ADD COLUMN leaf_hash bytea;

-- CompactTree.to_bytes() of the tree over every committed row: 8-byte size, then the
-- O(log n) perfect-subtree roots. Updated in the same transaction as chain_head.seq.
ALTER TABLE chain_head
    ADD COLUMN merkle_frontier bytea NOT NULL DEFAULT decode('0000000000000000', 'hex');

-- Roots of complete perfect subtrees, level >= 1 (level 0 is audit.leaf_hash):
-- node (level, idx) covers leaves [idx << level, (idx + 1) << level). Never updated.
CREATE TABLE merkle_nodes (
    level integer NOT NULL CHECK (level >= 1),
    idx   bigint NOT NULL CHECK (idx >= 0),
    hash  bytea NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Signed tree heads (C2SP signed notes), one per tree size.
CREATE TABLE checkpoints (
    size       bigint PRIMARY KEY CHECK (size >= 0),
    root       bytea NOT NULL,
    note       text NOT NULL,
    created_at double precision NOT NULL,
    key_id     text NOT NULL
);

-- Every log signing key ever used; a key after the first needs a rotation note signed
-- by the key it replaces (rotated_from).
CREATE TABLE log_keys (
    key_id        text PRIMARY KEY,
    public_key    bytea NOT NULL,  -- raw 32-byte Ed25519 public key
    created_at    double precision NOT NULL,
    rotated_from  text REFERENCES log_keys (key_id),
    rotation_note text
);
