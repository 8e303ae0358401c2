//! etcd-backupd: verified, compressed, age-encrypted etcd v3 snapshots to a local directory and S3.

pub mod alerts;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod drill;
pub mod errors;
pub mod etcd;
pub mod interrupt;
pub mod json;
pub mod manifest;
pub mod manpages;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod scratch;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod telemetry;
