//! The store's write-ahead log (`durable.wal`) as an input: reading it must
//! return its batches or a typed error, never panic, hang or allocate past
//! the input's size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = durable_runtime::store::__fuzz::wal(data);
});
