//! Qoima: an encrypted personal-data vault with per-subject crypto-shredding.
//!
//! See `docs/ARCHITECTURE.md` for the code map and the invariants each module keeps.

pub mod api;
pub mod assertion;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod layout;
pub mod metrics;
pub mod policy;
pub mod privacy;
pub mod schema;
pub mod server;
pub mod store;
pub mod tls;
pub mod vault;
