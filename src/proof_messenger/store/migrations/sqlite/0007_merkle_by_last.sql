-- Merkle nodes keyed by (last leaf covered, level). SQLite only: postgres/0007 is empty.
-- Keyed by (level, idx), the nodes one batch completes (16 + 8 + 4 + 2 + 1 for 32 rows)
-- were inserted at the right edges of five or more level ranges, so each commit rewrote
-- five or more leaf pages and their parents: 15 of 95 WAL pages per 32-row commit at
-- 100k rows. Every node a batch completes ends inside that batch's leaves, so keyed by its
-- last leaf ((idx + 1) << level) - 1 they all go to one right edge (3.6 pages).
-- PostgreSQL logs row changes, not pages, and keeps (level, idx).
--
-- Not additive: a relay version without this migration cannot write its nodes (no idx
-- column) and fails closed, as for 0006_replay_exp. Copies every node once (O(n)).
CREATE TABLE merkle_nodes_by_last (
    last_leaf INTEGER NOT NULL CHECK (last_leaf >= 1),  -- ((idx + 1) << level) - 1
    level     INTEGER NOT NULL CHECK (level >= 1),
    hash      BLOB NOT NULL,
    PRIMARY KEY (last_leaf, level)
) WITHOUT ROWID;

INSERT INTO merkle_nodes_by_last (last_leaf, level, hash)
    SELECT ((idx + 1) << level) - 1, level, hash FROM merkle_nodes ORDER BY 1, 2;

DROP TABLE merkle_nodes;

ALTER TABLE merkle_nodes_by_last RENAME TO merkle_nodes;
