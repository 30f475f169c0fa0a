//! The pin store: the node key each peer presented the first time it was
//! seen, so that a changed key is refused rather than silently accepted.
//!
//! File `state_dir/net/pins`, text, one pin per line, sorted by host:
//!
//! ```text
//! # snapsync peer pins: HOST FINGERPRINT
//! app1.example.com sha256:5f0c…
//! ```
//!
//! The file is the only truth: every call reads it, and every change is a
//! locked read-modify-write replaced atomically, so a daemon and a command
//! (or two commands) never lose each other's pins.
//!
//! Hosts are pinned under their canonical name
//! ([`crate::config::canonical_host`]): every host given to this module is
//! made canonical, and so is every line of the file as it is read (files
//! written before names were canonical may hold `App1`). Two lines that
//! name one host in different cases with different keys are an error, never
//! a choice. The file is private to the state directory's owner
//! ([`crate::trusted::Kind::Pins`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::NetError;
use super::files::{self, Lock, Replace};
use super::identity::{Fingerprint, check_host};
use crate::config::canonical_host;
use crate::trusted::Kind;

/// Name of the pin file in `state_dir/net`.
pub const PINS_FILE: &str = "pins";
const LOCK_FILE: &str = "pins.lock";
const HEADER: &str = "# snapsync peer pins: HOST FINGERPRINT (sha256 of the node certificate's public key)";

/// What [`Pins::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinCheck {
    /// The peer presented the key pinned for it.
    Matched,
    /// The peer had no pin; its key is now pinned.
    FirstSeen,
}

/// The pin store of one node.
#[derive(Debug, Clone)]
pub struct Pins {
    path: PathBuf,
    lock_path: PathBuf,
}

impl Pins {
    /// Opens the pin store in `state_dir` (a missing file is an empty store).
    pub fn open(state_dir: &Path) -> Result<Pins, NetError> {
        let dir = files::net_dir(state_dir)?;
        let pins = Pins { path: dir.join(PINS_FILE), lock_path: dir.join(LOCK_FILE) };
        pins.load()?;
        Ok(pins)
    }

    /// The pin file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `presented` against the pin for `host`: pins it if `host` has
    /// none, refuses it with [`NetError::PinMismatch`] if it differs.
    pub fn check(&self, host: &str, presented: Fingerprint) -> Result<PinCheck, NetError> {
        check_host(host)?;
        let host = &canonical_host(host);
        if let Some(pinned) = self.load()?.get(host) {
            return self.compare(host, *pinned, presented);
        }
        let _lock = Lock::exclusive(&self.lock_path)?;
        let mut pins = self.load()?;
        if let Some(pinned) = pins.get(host) {
            // Pinned by another process since the first read.
            return self.compare(host, *pinned, presented);
        }
        pins.insert(host.clone(), presented);
        self.store(&pins)?;
        Ok(PinCheck::FirstSeen)
    }

    /// The pin for `host`, if any.
    pub fn get(&self, host: &str) -> Result<Option<Fingerprint>, NetError> {
        Ok(self.load()?.get(&canonical_host(host)).copied())
    }

    /// Every pin, by host.
    pub fn list(&self) -> Result<BTreeMap<String, Fingerprint>, NetError> {
        self.load()
    }

    /// Pins `fingerprint` for `host` deliberately, replacing any pin; returns
    /// the one replaced. This is what accepting a changed key does.
    pub fn trust(&self, host: &str, fingerprint: Fingerprint) -> Result<Option<Fingerprint>, NetError> {
        check_host(host)?;
        let _lock = Lock::exclusive(&self.lock_path)?;
        let mut pins = self.load()?;
        let old = pins.insert(canonical_host(host), fingerprint);
        if old != Some(fingerprint) {
            self.store(&pins)?;
        }
        Ok(old)
    }

    /// Drops the pin for `host`, so that its next key is pinned as first
    /// seen; returns the pin dropped.
    pub fn forget(&self, host: &str) -> Result<Option<Fingerprint>, NetError> {
        let _lock = Lock::exclusive(&self.lock_path)?;
        let mut pins = self.load()?;
        let old = pins.remove(&canonical_host(host));
        if old.is_some() {
            self.store(&pins)?;
        }
        Ok(old)
    }

    fn compare(&self, host: &str, pinned: Fingerprint, presented: Fingerprint) -> Result<PinCheck, NetError> {
        if pinned == presented {
            Ok(PinCheck::Matched)
        } else {
            Err(NetError::PinMismatch { host: host.to_owned(), pinned, presented, path: self.path.clone() })
        }
    }

    fn load(&self) -> Result<BTreeMap<String, Fingerprint>, NetError> {
        let Some(bytes) = files::read_private(&self.path, Kind::Pins)? else { return Ok(BTreeMap::new()) };
        // Bytes that are not UTF-8 fail the host name check of their line.
        let text = String::from_utf8_lossy(&bytes);
        let mut pins = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |why: String| NetError::PinFile { path: self.path.clone(), line: i + 1, why };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let (Some(host), Some(fp), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad("expected `HOST FINGERPRINT`".into()));
            };
            check_host(host).map_err(|e| bad(e.to_string()))?;
            let fp: Fingerprint = fp.parse().map_err(|e: String| bad(format!("fingerprint: {e}")))?;
            let canonical = canonical_host(host);
            match pins.insert(canonical.clone(), fp) {
                None => {}
                // The same host twice (in another case, say) with one key: one pin.
                Some(earlier) if earlier == fp => {}
                Some(earlier) => {
                    return Err(bad(format!(
                        "{canonical} is pinned twice with different keys, {earlier} and {fp} (host names are \
                         compared without regard to case); delete the line of the key {canonical} does not \
                         have, or both lines to pin the key it presents next"
                    )));
                }
            }
        }
        Ok(pins)
    }

    fn store(&self, pins: &BTreeMap<String, Fingerprint>) -> Result<(), NetError> {
        let mut text = String::from(HEADER);
        text.push('\n');
        for (host, fp) in pins {
            text.push_str(&format!("{host} {fp}\n"));
        }
        files::write_private(&self.path, text.as_bytes(), Replace::Always)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_bytes([b; 32])
    }

    #[test]
    fn first_seen_is_pinned_and_then_matched() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        assert_eq!(pins.check("b", fp(1)).unwrap(), PinCheck::FirstSeen);
        assert_eq!(pins.check("b", fp(1)).unwrap(), PinCheck::Matched);
        assert_eq!(pins.check("c", fp(2)).unwrap(), PinCheck::FirstSeen);
        // Another handle on the same state directory sees the same pins.
        let reopened = Pins::open(dir.path()).unwrap();
        assert_eq!(reopened.get("b").unwrap(), Some(fp(1)));
        assert_eq!(reopened.list().unwrap().len(), 2);
    }

    #[test]
    fn a_changed_key_is_refused_with_the_command_that_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        pins.check("app1.example.com", fp(1)).unwrap();
        let err = pins.check("app1.example.com", fp(9)).unwrap_err();
        match &err {
            NetError::PinMismatch { host, pinned, presented, path } => {
                assert_eq!(host, "app1.example.com");
                assert_eq!((*pinned, *presented), (fp(1), fp(9)));
                assert_eq!(path, pins.path());
            }
            other => panic!("unexpected {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("snapsync trust --peer app1.example.com"), "{msg}");
        assert!(msg.contains(&fp(9).to_string()) && msg.contains(&fp(1).to_string()), "{msg}");
        assert!(!err.is_transient());
        // The refusal changed nothing.
        assert_eq!(pins.get("app1.example.com").unwrap(), Some(fp(1)));
    }

    #[test]
    fn trust_replaces_and_forget_drops() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        pins.check("b", fp(1)).unwrap();
        assert_eq!(pins.trust("b", fp(2)).unwrap(), Some(fp(1)));
        assert_eq!(pins.check("b", fp(2)).unwrap(), PinCheck::Matched);
        assert_eq!(pins.forget("b").unwrap(), Some(fp(2)));
        assert_eq!(pins.forget("b").unwrap(), None);
        assert_eq!(pins.check("b", fp(3)).unwrap(), PinCheck::FirstSeen);
    }

    #[test]
    fn a_damaged_pin_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        pins.check("b", fp(1)).unwrap();
        let text = std::fs::read_to_string(pins.path()).unwrap();
        std::fs::write(pins.path(), format!("{text}c not-a-fingerprint\n")).unwrap();
        let err = pins.check("b", fp(1)).unwrap_err();
        assert!(matches!(err, NetError::PinFile { line: 3, .. }), "{err}");
        assert!(matches!(Pins::open(dir.path()), Err(NetError::PinFile { .. })));
    }

    #[test]
    fn host_case_does_not_open_a_new_pin_slot() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        pins.check("app1", fp(1)).unwrap();
        for name in ["APP1", "App1", "aPp1"] {
            let err = pins.check(name, fp(2)).unwrap_err();
            assert!(matches!(&err, NetError::PinMismatch { host, .. } if host == "app1"), "{name}: {err}");
            assert_eq!(pins.check(name, fp(1)).unwrap(), PinCheck::Matched);
            assert_eq!(pins.get(name).unwrap(), Some(fp(1)));
        }
        assert_eq!(pins.list().unwrap().keys().collect::<Vec<_>>(), ["app1"]);
        assert_eq!(pins.forget("APP1").unwrap(), Some(fp(1)));
        assert_eq!(pins.check("APP1", fp(3)).unwrap(), PinCheck::FirstSeen);
        assert_eq!(pins.list().unwrap().keys().collect::<Vec<_>>(), ["app1"]);
    }

    #[test]
    fn an_old_pin_file_with_upper_case_names_is_read_canonically() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        files::write_private(
            pins.path(),
            format!("APP1 {}\nb {}\nB {}\n", fp(1), fp(2), fp(2)).as_bytes(),
            Replace::Always,
        )
        .unwrap();
        assert_eq!(pins.get("app1").unwrap(), Some(fp(1)));
        assert!(matches!(pins.check("app1", fp(9)), Err(NetError::PinMismatch { .. })));
        assert_eq!(pins.list().unwrap().len(), 2);
        // The next change writes canonical names.
        pins.check("c", fp(3)).unwrap();
        let text = std::fs::read_to_string(pins.path()).unwrap();
        assert!(text.contains(&format!("app1 {}", fp(1))) && !text.contains("APP1"), "{text}");
    }

    #[test]
    fn one_host_pinned_in_two_cases_with_two_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        files::write_private(pins.path(), format!("app1 {}\nAPP1 {}\n", fp(1), fp(2)).as_bytes(), Replace::Always)
            .unwrap();
        let err = pins.check("app1", fp(1)).unwrap_err();
        assert!(matches!(err, NetError::PinFile { line: 2, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("app1 is pinned twice with different keys"), "{msg}");
        assert!(matches!(Pins::open(dir.path()), Err(NetError::PinFile { .. })));
    }

    #[test]
    fn a_pin_file_others_can_read_or_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        pins.check("b", fp(1)).unwrap();
        for mode in [0o644, 0o620] {
            std::fs::set_permissions(pins.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let err = pins.check("b", fp(1)).unwrap_err();
            assert!(matches!(err, NetError::UnsafeFile(_)), "{err}");
            assert!(err.to_string().contains(&format!("chmod 600 {}", pins.path().display())), "{err}");
        }
    }

    #[test]
    fn pins_survive_concurrent_first_sightings() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let pins = pins.clone();
                s.spawn(move || pins.check(&format!("h{i}"), fp(i)).unwrap());
            }
        });
        assert_eq!(pins.list().unwrap().len(), 8);
    }
}
