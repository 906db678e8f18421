//! The journal's small state file, `state.toml`: the epoch, and per peer
//! how far it has acked our outbox, what we expect from it and the
//! counters `status` shows. Readable on purpose (`cat state.toml`).
//!
//! It is replaced atomically (write `state.toml.tmp`, fsync, rename over
//! `state.toml`, fsync the directory), so a crash leaves the old or the new
//! file, never a mix. It is a *checkpoint*: the receive state and received
//! counters in it cover the inbox records below `inbox_checkpoint`; the
//! journal replays the inbox records from there on when it opens, so the
//! inbox record itself is the one atomic write that moves "next expected".
//! Everything else in it may lag by up to a second after a crash, which
//! costs at most a resend the peer drops, or a few uncounted messages.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::log::sync_dir;

/// Layout version of the journal this file heads. 2 added loss notices in
/// the inbox, tombstones and `msgs_lost`; a version 1 journal is read as
/// is (it has none of them) and written back as 2, which an older peerd
/// refuses by name instead of misreading.
pub const VERSION: u32 = 2;
/// The oldest layout this peerd still opens.
pub const OLDEST: u32 = 1;
const NAME: &str = "state.toml";
const TMP: &str = "state.toml.tmp";

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    /// Hex: TOML integers stop at i64, epochs are any non-zero u64.
    pub epoch: String,
    /// Receive state and received counters cover inbox records below this.
    pub inbox_checkpoint: u64,
    /// The oldest inbox record not trimmed by retention.
    pub inbox_first: u64,
    /// Outbox numbers below this may have been sent before their fsync;
    /// after a shutdown that was not clean they are never reused (layout
    /// 2; 0 in older files).
    #[serde(default)]
    pub outbox_reserved: u64,
    #[serde(default)]
    pub peer: BTreeMap<String, PeerFile>,
}

/// One peer's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFile {
    pub acked_next: u64,
    /// Hex, like `epoch`; "0" for none yet.
    pub recv_epoch: String,
    pub recv_next: u64,
    pub msgs_sent: u64,
    pub bytes_sent: u64,
    pub msgs_received: u64,
    pub bytes_received: u64,
    /// Messages known lost between us and this peer, either way (see
    /// README "Durability").
    #[serde(default)]
    pub msgs_lost: u64,
    /// Queued records of ours the operator dropped for this peer
    /// (`peerctl drop`), not yet reported to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<u64>,
}

pub fn hex(v: u64) -> String {
    format!("{v:016x}")
}

pub fn unhex(s: &str, what: &str) -> io::Result<u64> {
    u64::from_str_radix(s, 16).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{NAME}: bad {what} {s:?}: {e}"),
        )
    })
}

/// Read the state file of the journal in `dir`, if there is one.
pub fn load(dir: &Path) -> io::Result<Option<StateFile>> {
    let text = match std::fs::read_to_string(dir.join(NAME)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file: StateFile = toml::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", dir.join(NAME).display()),
        )
    })?;
    if !(OLDEST..=VERSION).contains(&file.version) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: journal layout version {} (this peerd reads {OLDEST} to {VERSION}); \
                 it was written by another release of peerd",
                dir.join(NAME).display(),
                file.version
            ),
        ));
    }
    Ok(Some(file))
}

/// Replace the state file atomically.
pub fn save(dir: &Path, file: &StateFile, fsync: bool) -> io::Result<()> {
    let text = toml::to_string(file).map_err(io::Error::other)?;
    let tmp = dir.join(TMP);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(b"# peerd journal state; replaced atomically, see README \"Durability\"\n")?;
    f.write_all(text.as_bytes())?;
    if fsync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, dir.join(NAME))?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_other_versions() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load(tmp.path()).unwrap(), None);
        let mut f = StateFile {
            version: VERSION,
            epoch: hex(u64::MAX),
            inbox_checkpoint: 3,
            inbox_first: 1,
            outbox_reserved: 0,
            peer: BTreeMap::new(),
        };
        f.peer.insert(
            "b".into(),
            PeerFile {
                acked_next: 9,
                recv_epoch: hex(5),
                ..PeerFile::default()
            },
        );
        save(tmp.path(), &f, true).unwrap();
        let back = load(tmp.path()).unwrap().unwrap();
        assert_eq!(back, f);
        assert_eq!(unhex(&back.epoch, "epoch").unwrap(), u64::MAX);
        assert!(!tmp.path().join(TMP).exists());
        f.version = 99;
        save(tmp.path(), &f, false).unwrap();
        let e = load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("version 99"), "{e}");
    }
}
