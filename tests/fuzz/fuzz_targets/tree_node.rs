//! Tree nodes: `tree::Node::decode`. The properties are `snapsync::fuzzing::check_tree_node`.
#![no_main]

#[global_allocator]
static ALLOC: snapsync_fuzz::BoundedAlloc = snapsync_fuzz::BoundedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| snapsync::fuzzing::check_tree_node(data));
