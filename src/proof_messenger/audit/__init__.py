"""Pure building blocks of the tamper-evident, encrypted audit log.

- ``crypto``: master key file, ``Keyring`` (HKDF-derived AES-256-GCM, AAD-bound).
- ``primitives``: size-checked HKDF-SHA-256, AES-256-GCM and HMAC-SHA-256 wrappers.
- ``merkle``: RFC 6962/9162 hashing, ``CompactTree`` frontier, proofs and verifiers.
- ``checkpoint``: C2SP signed-note tree heads signed with an Ed25519 log key.

Only the standard library and pyca/cryptography are imported here; I/O is
limited to the explicit key-file helpers.
"""
