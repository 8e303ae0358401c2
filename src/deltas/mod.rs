//! Point-in-time recovery: between full snapshots, the cluster's changes written out as encrypted delta
//! segments, each committed by a manifest that chains it to the one before and to its base snapshot.
//! `segment` is a body's format, `manifest` a segment's id and commit, `chain` how segments follow a
//! base and what they can restore (all three pure); `seal` compresses and encrypts a body, and opens a
//! stored one with every check its manifest allows.

pub mod chain;
pub mod manifest;
pub mod replay;
pub mod retention;
pub mod run;
pub mod seal;
pub mod segment;
pub mod stored;
pub mod watch;
