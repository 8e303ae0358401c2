//! The bbolt reader on arbitrary bytes: it returns an error or a status, and never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = etcd_backupd::snapshot::bbolt::status(data);
});
