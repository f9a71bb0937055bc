//! govbox tamper-evident audit log in sled: RFC 6962 Merkle tree, signed checkpoints, group commit, export and offline verify
#![forbid(unsafe_code)]
