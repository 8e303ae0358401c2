//! Checks on the plain snapshot bytes as they stream past. Pure.

pub mod bbolt;
mod mvcc;
mod spill;
pub mod stream;
mod summary;
mod trailer;

pub use trailer::{TRAILER_LEN, TrailerCheck, TrailerError};
