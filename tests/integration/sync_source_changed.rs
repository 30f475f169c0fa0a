//! A file the serving host edited again after its last check (SPEC §3,
//! §4.15): the host that pulls it must not fail the run on an edit the
//! other side had not recorded yet; the serving host records it, and the
//! pull takes what is on disk there now.

use crate::cluster::Cluster;
use crate::common::{bytes, write};

/// Regression (found by the model-based test): `sync` exited 1 with
/// "chunk … is no longer here" when the peer it pulled from had changed
/// the file on disk since its last check.
#[test]
fn pulling_a_file_its_host_edited_since_its_last_check_takes_the_new_content() {
    let mut c = Cluster::new(2);
    c.start_all();
    write(&c.path("a", "f.bin"), &bytes(1, 200_000));
    c.sync_ok("a");
    c.assert_all_same();

    // b records an edit, then edits again without a check.
    write(&c.path("b", "f.bin"), &bytes(2, 200_000));
    c.check("b");
    let last = bytes(3, 200_000);
    write(&c.path("b", "f.bin"), &last);

    // a pulls the recorded edit; b's file no longer holds its chunks.
    let v = c.sync_ok_with("a", &["--peer", "b"]);
    assert_eq!(std::fs::read(c.path("a", "f.bin")).unwrap(), last, "a took what b has now: {v:#}");
    c.assert_all_same();
}
