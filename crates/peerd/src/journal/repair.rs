//! `peerd journal verify` and `peerd journal repair`: the operator's way
//! out of a damaged journal (README "Durability").
//!
//! Both read every segment of both logs the way opening does, but go on
//! past damage, and sort what they find:
//!
//! - **torn tail**: a partial write at the very end of the last segment,
//!   with no valid record after it. A crash cut a batch before its fsync,
//!   so none of it was acknowledged; peerd cuts it by itself when it opens.
//! - **damaged records**: a bad record (length, CRC or seq) followed by a
//!   valid one (in the same segment, or the next segment's first), or a
//!   missing segment. The records in between cannot be read. peerd refuses
//!   to start on this; `repair` replaces each such record by a
//!   **tombstone** (see `log`) so the numbering stays whole and no sequence
//!   number is ever given to another message. A peer is then told the
//!   outbox records it has not acknowledged are lost (it logs and counts
//!   them); lost inbox records are gone from `tail`.
//!
//! Both take the journal's lock: they refuse to run while peerd has the
//! journal open.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::log::{self, HEADER, TOMBSTONE_BYTES, Walked};
use super::state;

/// Most tombstones one damaged stretch may need: more means the file names
/// themselves are wrong (e.g. a segment from another journal), which a
/// person must look at.
const MAX_TOMBSTONES: u64 = 1 << 24;

/// What is wrong in one place of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `bytes` of a partial write at `offset` of the last segment.
    TornTail {
        path: PathBuf,
        offset: u64,
        bytes: u64,
    },
    /// Records `seqs` cannot be read: damaged at `offset` of `path`, or (no
    /// offset) their segment is missing.
    Damaged {
        path: PathBuf,
        offset: Option<u64>,
        seqs: Range<u64>,
        why: String,
    },
}

/// One log (outbox or inbox), as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    pub name: &'static str,
    pub first: u64,
    pub next: u64,
    pub segments: usize,
    /// Tombstones already in it (records dropped by an earlier repair).
    pub tombstones: u64,
    pub problems: Vec<Problem>,
}

/// Both logs, and what the peers had acknowledged (for the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub logs: Vec<LogReport>,
    /// (peer, every outbox record below this is in its inbox).
    pub acked: Vec<(String, u64)>,
}

impl Report {
    /// Nothing that keeps peerd from starting (a torn tail it cuts itself).
    pub fn is_clean(&self) -> bool {
        self.logs
            .iter()
            .flat_map(|l| &l.problems)
            .all(|p| matches!(p, Problem::TornTail { .. }))
    }

    /// For people: one block per log, one line per problem, and what a
    /// repair drops (`repaired`: it did).
    pub fn render(&self, repaired: bool) -> String {
        let mut out = String::new();
        for l in &self.logs {
            let range = if l.next > l.first {
                format!("records {}..{}", l.first, l.next - 1)
            } else {
                "no records".to_string()
            };
            let _ = write!(
                out,
                "{}: {range} in {} segment{}",
                l.name,
                l.segments,
                if l.segments == 1 { "" } else { "s" }
            );
            if l.tombstones > 0 {
                let _ = write!(out, ", {} dropped by an earlier repair", l.tombstones);
            }
            if l.problems.is_empty() {
                out.push_str(": ok");
            }
            out.push('\n');
            for p in &l.problems {
                out.push_str("  ");
                out.push_str(&self.describe(l.name, p, repaired));
                out.push('\n');
            }
        }
        out
    }

    fn describe(&self, log: &str, p: &Problem, repaired: bool) -> String {
        match p {
            Problem::TornTail {
                path,
                offset,
                bytes,
            } => format!(
                "{}: torn tail of {bytes} bytes at offset {offset} (a write cut by a crash, \
                 never acknowledged): {}",
                path.display(),
                if repaired {
                    "cut"
                } else {
                    "peerd cuts it when it starts"
                }
            ),
            Problem::Damaged {
                path,
                offset,
                seqs,
                why,
            } => {
                let at = match offset {
                    Some(o) => format!("{} at offset {o} ({why})", path.display()),
                    None => format!("{} ({why})", path.display()),
                };
                let n = seqs.end - seqs.start;
                let verb = if repaired {
                    "dropped"
                } else {
                    "a repair drops"
                };
                let what = format!(
                    "{verb} {log} records {}..{} ({n} message{})",
                    seqs.start,
                    seqs.end - 1,
                    if n == 1 { "" } else { "s" }
                );
                let fate = if log == "outbox" {
                    self.outbox_fate(seqs)
                } else {
                    "received messages that are gone from this inbox".to_string()
                };
                format!("{at}: {what}: {fate}")
            }
        }
    }

    /// Which peers lose what of a dropped outbox range.
    fn outbox_fate(&self, seqs: &Range<u64>) -> String {
        let mut fates = Vec::new();
        for (peer, acked) in &self.acked {
            let unacked = seqs.end.saturating_sub((*acked).max(seqs.start));
            if unacked == 0 {
                fates.push(format!("{peer} has them all"));
            } else {
                fates.push(format!(
                    "{unacked} never reached {peer}, which will be told they are lost"
                ));
            }
        }
        if fates.is_empty() {
            "no peer is configured".to_string()
        } else {
            fates.join("; ")
        }
    }
}

/// Look at the journal in `dir` without changing it.
pub fn verify(dir: &Path) -> io::Result<Report> {
    let _lock = lock(dir)?;
    scan(dir)
}

/// Make the journal in `dir` open again: cut torn tails, and put a
/// tombstone in place of every damaged or missing record. Returns what it
/// found (and so dropped).
pub fn repair(dir: &Path) -> io::Result<Report> {
    let _lock = lock(dir)?;
    let report = scan(dir)?;
    for l in &report.logs {
        let log_dir = dir.join(l.name);
        for p in &l.problems {
            if let Problem::Damaged { seqs, .. } = p
                && seqs.end - seqs.start > MAX_TOMBSTONES
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: records {}..{} are missing: too many to be damage; are the segment \
                         files from this journal? Nothing was changed",
                        log_dir.display(),
                        seqs.start,
                        seqs.end - 1
                    ),
                ));
            }
        }
        fix_log(&log_dir, &l.problems)?;
    }
    Ok(report)
}

fn lock(dir: &Path) -> io::Result<File> {
    let lock_path = dir.join("lock");
    if !dir.join("state.toml").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no journal in {} (no state.toml)", dir.display()),
        ));
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    if f.try_lock().is_err() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "the journal {} is open in a running peerd; stop it first",
                dir.display()
            ),
        ));
    }
    Ok(f)
}

fn scan(dir: &Path) -> io::Result<Report> {
    let mut acked = Vec::new();
    if let Some(file) = state::load(dir)? {
        for (name, p) in &file.peer {
            acked.push((name.clone(), p.acked_next));
        }
    }
    let mut logs = Vec::new();
    for name in ["outbox", "inbox"] {
        logs.push(scan_log(&dir.join(name), name)?);
    }
    Ok(Report { logs, acked })
}

fn scan_log(dir: &Path, name: &'static str) -> io::Result<LogReport> {
    let bases = if dir.exists() {
        log::segment_bases(dir)?
    } else {
        Vec::new()
    };
    let mut report = LogReport {
        name,
        first: bases.first().copied().unwrap_or(1),
        next: bases.first().copied().unwrap_or(1),
        segments: bases.len(),
        tombstones: 0,
        problems: Vec::new(),
    };
    let mut expected: Option<u64> = None;
    for (i, &base) in bases.iter().enumerate() {
        let path = log::segment_path(dir, base);
        if let Some(e) = expected {
            if base < e {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: starts at record {base}, but the segment before it ends at {}: \
                         segments overlap; is it from another journal?",
                        path.display(),
                        e - 1
                    ),
                ));
            }
            if base > e {
                report.problems.push(Problem::Damaged {
                    path: log::segment_path(dir, e),
                    offset: None,
                    seqs: e..base,
                    why: "segment missing".into(),
                });
            }
        }
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let next_base = bases.get(i + 1).copied();
        let (next, tombstones) =
            scan_segment(&file, &path, base, size, next_base, &mut report.problems)?;
        report.tombstones += tombstones;
        expected = Some(next);
        report.next = next;
    }
    Ok(report)
}

/// Walk one segment past damage; returns the seq after its last record
/// and its tombstones.
fn scan_segment(
    file: &File,
    path: &Path,
    base: u64,
    size: u64,
    next_base: Option<u64>,
    problems: &mut Vec<Problem>,
) -> io::Result<(u64, u64)> {
    let (mut offset, mut seq, mut tombstones) = (0u64, base, 0u64);
    loop {
        let walked = log::walk(file, offset, size, seq, 0, 1 << 20, &mut |_, _, data| {
            tombstones += u64::from(log::is_tombstone(data));
            true
        })?;
        match walked {
            Walked::Done { seq, .. } => return Ok((seq, tombstones)),
            Walked::Bad {
                offset: bad,
                seq: bad_seq,
                why,
            } => match log::next_valid(file, bad, size, bad_seq)? {
                Some((o, s)) => {
                    problems.push(Problem::Damaged {
                        path: path.to_path_buf(),
                        offset: Some(bad),
                        seqs: bad_seq..s,
                        why,
                    });
                    (offset, seq) = (o, s);
                }
                None => match next_base {
                    None => {
                        problems.push(Problem::TornTail {
                            path: path.to_path_buf(),
                            offset: bad,
                            bytes: size - bad,
                        });
                        return Ok((bad_seq, tombstones));
                    }
                    Some(nb) => {
                        problems.push(Problem::Damaged {
                            path: path.to_path_buf(),
                            offset: Some(bad),
                            seqs: bad_seq..nb.max(bad_seq),
                            why,
                        });
                        return Ok((nb.max(bad_seq), tombstones));
                    }
                },
            },
        }
    }
}

/// Apply the fixes for one log's problems.
fn fix_log(dir: &Path, problems: &[Problem]) -> io::Result<()> {
    let mut damaged_files: Vec<&Path> = Vec::new();
    for p in problems {
        match p {
            Problem::TornTail { path, offset, .. } => {
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(*offset)?;
                f.sync_all()?;
            }
            Problem::Damaged {
                path,
                offset: None,
                seqs,
                ..
            } => {
                let mut out =
                    Vec::with_capacity(((seqs.end - seqs.start) * TOMBSTONE_BYTES) as usize);
                for s in seqs.clone() {
                    out.extend_from_slice(&log::tombstone(s));
                }
                write_new(path, &out)?;
            }
            Problem::Damaged {
                path,
                offset: Some(_),
                ..
            } => {
                if !damaged_files.contains(&path.as_path()) {
                    damaged_files.push(path);
                }
            }
        }
    }
    for path in damaged_files {
        rewrite(path, problems)?;
    }
    log::sync_dir(dir)
}

/// Rewrite a segment with a tombstone in place of each damaged record:
/// the good stretches are copied byte for byte.
fn rewrite(path: &Path, problems: &[Problem]) -> io::Result<()> {
    let old = std::fs::read(path)?;
    let mut out = Vec::with_capacity(old.len());
    let mut at = 0usize;
    for p in problems {
        let Problem::Damaged {
            path: p_path,
            offset: Some(bad),
            seqs,
            ..
        } = p
        else {
            continue;
        };
        if p_path != path {
            continue;
        }
        let bad = *bad as usize;
        out.extend_from_slice(&old[at..bad]);
        for s in seqs.clone() {
            out.extend_from_slice(&log::tombstone(s));
        }
        // Resume at the valid record after the damage: the walk found it
        // by its seq, which is `seqs.end` (or the segment ends here).
        at = find_record(&old, bad, seqs.end).unwrap_or(old.len());
    }
    out.extend_from_slice(&old[at..]);
    let tmp = path.with_extension("log.repair");
    write_new(&tmp, &out)?;
    std::fs::rename(&tmp, path)
}

/// The offset (after `from`) of the valid record numbered `seq`.
fn find_record(buf: &[u8], from: usize, seq: u64) -> Option<usize> {
    let h = HEADER as usize;
    (from + 1..buf.len().saturating_sub(h + 8)).find(|&i| {
        let len = u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]]);
        len >= 8
            && i + h + len <= buf.len()
            && buf[i + h..i + h + 8] == seq.to_le_bytes()
            && crc32fast::hash(&buf[i + h..i + h + len]) == crc
    })
}

/// Write a new segment file whole, owned like its directory (a repair run
/// by root must leave files the service user can open).
fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    io::Write::write_all(&mut f, data)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir)?;
        std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
    }
    f.sync_all()
}
