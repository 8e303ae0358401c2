//! Point-in-time recovery: between full snapshots, the cluster's changes written out as encrypted delta
//! segments, each committed by a manifest that chains it to the one before and to its base snapshot.
//!
//! Pure: `segment` (a body: etcd's own `mvccpb.Event`s grouped by revision, with the leases they first
//! use), `manifest` (a segment's commit, checked against its name), `chain` (following a chain from its
//! base to its first break, and what a restore to a revision or a time needs), `retention` (which
//! segments a prune removes). Over bytes: `seal` (zstd + age, and opening against a manifest). I/O:
//! `stored` (a destination's segments written and read back), `watch` (one chain streamed from etcd's
//! watch), `run` (the daemon's stream: which chain goes on, checked against etcd, asking for a new
//! base), `lock` (the cluster's stream lock), `replay` (segments replayed into a throwaway member, one
//! transaction per original revision), `point` (a restore to a revision or a time).

pub mod chain;
pub mod lock;
pub mod manifest;
pub mod point;
pub mod replay;
pub mod retention;
pub mod run;
pub mod seal;
pub mod segment;
pub mod stored;
pub mod watch;
