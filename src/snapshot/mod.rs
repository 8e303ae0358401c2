//! Checks on the plain snapshot bytes as they stream past. Pure.

mod trailer;

pub use trailer::{TRAILER_LEN, TrailerCheck, TrailerError};
