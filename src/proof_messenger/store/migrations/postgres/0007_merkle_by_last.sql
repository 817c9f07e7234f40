-- Intentionally empty: sqlite/0007_merkle_by_last.sql re-keys SQLite's merkle_nodes by
-- (last leaf, level) so that the nodes of one commit share pages. PostgreSQL keeps
-- (level, idx): it logs row changes rather than whole pages, so the few right edges per
-- level cost it no extra page writes. The file keeps the two migration lists in step.
SELECT 1;
