//! Test harness: real etcd processes on loopback (plain or TLS client-cert auth), an in-process
//! s3s-fs S3 server with fault injection, age identities, and a runner for the etcd-backupd binary.
#![allow(dead_code)]

mod daemon;
mod etcd;
mod hook;
mod pki;
mod proxy;
mod s3;
mod setup;

// Each test binary uses some of the harness: the rest is unused there, not dead.
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use etcd::*;
#[allow(unused_imports)]
pub use hook::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use s3::*;
#[allow(unused_imports)]
pub use setup::*;
