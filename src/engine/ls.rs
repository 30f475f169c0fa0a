//! `ls`: the tracked entries with their hashes and metadata.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Engine, EngineError};
use crate::config::ResolvedGroup;
use crate::store::join_logical;
use crate::tree::Body;

/// One tracked entry as `ls` shows it.
#[derive(Debug, Serialize)]
pub struct LsEntry {
    /// The group tracking it.
    pub group: String,
    /// Local path (shown lossily where it is not UTF-8).
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    /// Permission bits, octal, unless ignored or a link.
    pub mode: Option<String>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group owner.
    pub gid: Option<u32>,
    /// File length.
    pub size: Option<u64>,
    /// File mtime as `seconds.nanoseconds`.
    pub mtime: Option<String>,
    /// Content hash (file), tree hash (directory).
    pub hash: Option<String>,
    /// Link target.
    pub target: Option<String>,
}

/// Serialises a path as text, replacing bytes that are not UTF-8: a JSON
/// document must not fail on an odd file name.
pub(crate) fn lossy<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The local path of a logical path (raw bytes), through the group's roots.
pub(crate) fn local_path(group: &ResolvedGroup, logical: &[u8]) -> Option<PathBuf> {
    group.to_local(Path::new(OsStr::from_bytes(logical)))
}

impl Engine {
    /// Every tracked (not deleted) entry at or below `under`, sorted by path.
    pub fn ls(&self, under: Option<&Path>) -> Result<Vec<LsEntry>, EngineError> {
        let under = under.map(Engine::absolute).transpose()?;
        let mut out = Vec::new();
        for group in &self.groups {
            for item in self.store.all_dir_records(&group.name) {
                let (dir, record) = item?;
                for (name, rec) in &record.children {
                    if rec.deleted {
                        continue;
                    }
                    let Some(path) = local_path(group, &join_logical(&dir, name)) else {
                        continue;
                    };
                    if under.as_ref().is_some_and(|u| !path.starts_with(u)) {
                        continue;
                    }
                    let (size, hash, target) = match &rec.body {
                        Body::File { size, content } => (Some(*size), Some(content.to_hex()), None),
                        Body::Dir { tree } => (None, Some(tree.to_hex()), None),
                        Body::Symlink { target } => (None, None, Some(String::from_utf8_lossy(target).into_owned())),
                    };
                    out.push(LsEntry {
                        group: group.name.clone(),
                        path,
                        kind: rec.body.kind().as_str(),
                        mode: rec.meta.mode.map(|m| format!("{m:04o}")),
                        uid: rec.meta.uid,
                        gid: rec.meta.gid,
                        size,
                        mtime: rec.meta.mtime.map(|t| format!("{}.{:09}", t.secs, t.nanos)),
                        hash,
                        target,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.group.cmp(&b.group)));
        Ok(out)
    }
}
