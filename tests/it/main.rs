//! One integration-test binary (faster to build than one per file). Every test starts the
//! real server on a random port over a real RocksDB in a temp directory.

mod helpers;

mod api_contract;
mod architecture;
mod audit_completeness;
mod audit_trail;
mod authz_matrix;
mod backups;
mod binary;
mod client;
mod compat;
mod connections;
mod core_hardening;
mod crash;
mod docs;
mod exposure;
mod faults;
mod grants;
mod hostile;
mod hygiene;
mod idempotency;
mod import;
mod keys;
mod lookup;
mod nodes;
mod privacy;
mod rights;
mod storage;
mod tls;
mod views;
