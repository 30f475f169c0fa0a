//! Config text: `config::parse_str` and `Config::resolve`. The properties are `snapsync::fuzzing::check_config`.
#![no_main]

#[global_allocator]
static ALLOC: snapsync_fuzz::BoundedAlloc = snapsync_fuzz::BoundedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| snapsync::fuzzing::check_config(data));
