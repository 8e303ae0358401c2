//! The companion archive of a backup: the control-plane files a node needs besides etcd's data
//! (`[files]`), as a tar streamed through zstd and age.

pub mod preset;
