//! A segmented append-only log of numbered records: the storage under the
//! journal's outbox and inbox (the Kafka / NATS filestore design).
//!
//! # On disk
//!
//! A directory of segment files, each named by the sequence number of its
//! first record as 20 decimal digits plus `.log`, so names sort in order.
//! Records are numbered consecutively across segments. A segment is a run
//! of records:
//!
//! | field   | size   | what                                            |
//! |---------|--------|-------------------------------------------------|
//! | len     | u32 LE | payload length (at least 8, at most [`MAX_PAYLOAD`]) |
//! | crc     | u32 LE | CRC-32 (IEEE) of the payload                    |
//! | payload | len    | the record's seq (u64 LE), then the caller's bytes |
//!
//! The seq inside the payload is redundant with the position; it makes a
//! misplaced or stale record detectable instead of silently misnumbered.
//!
//! # Writing
//!
//! One [`Appender`] (the journal's writer thread) appends records to a
//! buffer and [`Appender::commit`]s a batch with one `write` and one fsync
//! (group commit). A segment is sealed when it reaches `segment_bytes`:
//! its data is fsynced *before* the next segment file is created, so only
//! the last segment can ever hold a torn write. What is committed is
//! published to the [`LogIndex`] (shared, under the journal's lock) that
//! readers use; readers never see uncommitted bytes.
//!
//! # Recovery
//!
//! [`open`] scans every segment, checking each record's length, CRC and
//! seq. A torn tail is a partial write at the very end of the last segment
//! (a crash before the batch's fsync, so nothing in it was acknowledged):
//! a bad record there with **no valid record after it** is cut (and it is
//! logged). A bad record followed by a valid one, in any segment, the last
//! included, is corruption: opening fails with the file, offset and
//! record, rather than silently dropping or renumbering messages. The
//! operator's way out is `peerd journal verify` / `repair` (see `repair`),
//! which puts a **tombstone** in place of each damaged record: a record
//! whose payload is only its seq. Tombstones keep the numbering whole, so
//! no sequence number is ever reused; readers report them as lost.
//!
//! # Memory
//!
//! Only a sparse index is kept: per segment, a mark (seq, offset) every
//! [`MARK_RECORDS`] records or [`MARK_BYTES`] bytes. A read seeks to the
//! mark at or before the wanted seq and scans forward from there.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes before a record's payload: length and CRC.
pub const HEADER: u64 = 8;
/// Bytes of the seq that starts every payload.
const SEQ_BYTES: usize = 8;
/// Largest payload: one message of up to 64 MiB (`max_message`'s ceiling)
/// with its fields. Anything claiming more is damage.
pub const MAX_PAYLOAD: u64 = 65 << 20;
/// A mark every this many records...
pub const MARK_RECORDS: u64 = 256;
/// ...or this many bytes, whichever comes first.
pub const MARK_BYTES: u64 = 64 << 10;
/// How much a scan reads at once.
const CHUNK: u64 = 256 << 10;
const SUFFIX: &str = ".log";

/// A point in a segment's sparse index: record `seq` starts at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: u64,
    offset: u64,
}

/// One segment, as far as it is committed.
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of whole committed records.
    len: u64,
    /// Records in it.
    count: u64,
    /// Position of its offset 0 in the log's byte stream (see
    /// [`LogIndex::end_pos`]).
    pos: u64,
    marks: Vec<Mark>,
}

/// The committed state of a log: what readers may read.
pub struct LogIndex {
    /// By base seq; never empty (the last one is the one being appended).
    segments: BTreeMap<u64, Segment>,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub seq: u64,
    /// Its position in the log's byte stream.
    pub pos: u64,
    /// The payload after the seq.
    pub data: Vec<u8>,
}

/// A place to read from, taken under the journal's lock and read outside
/// it: the segment's file (kept open even if the segment is deleted
/// meanwhile) from a mark up to the committed end.
pub struct Span {
    file: Arc<File>,
    path: PathBuf,
    seq: u64,
    offset: u64,
    end: u64,
    pos: u64,
}

impl LogIndex {
    /// The oldest record kept.
    pub fn first(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(1)
    }

    /// The seq the next record will get.
    pub fn next(&self) -> u64 {
        self.segments
            .iter()
            .next_back()
            .map(|(base, s)| base + s.count)
            .unwrap_or(1)
    }

    /// Position of the end of the log in its byte stream: the total size of
    /// every record committed since the log was opened, counting from the
    /// start of the oldest segment kept. Differences of positions are
    /// bytes on disk.
    pub fn end_pos(&self) -> u64 {
        self.segments
            .values()
            .next_back()
            .map(|s| s.pos + s.len)
            .unwrap_or(0)
    }

    /// Where to read record `seq` from, if it is kept.
    pub fn span(&self, seq: u64) -> Option<Span> {
        let (base, seg) = self.segments.range(..=seq).next_back()?;
        if seq >= base + seg.count {
            return None;
        }
        let i = seg.marks.partition_point(|m| m.seq <= seq);
        let mark = seg.marks.get(i.checked_sub(1)?)?;
        Some(Span {
            file: seg.file.clone(),
            path: seg.path.clone(),
            seq: mark.seq,
            offset: mark.offset,
            end: seg.len,
            pos: seg.pos,
        })
    }

    /// Publish what an [`Appender::commit`] made durable.
    pub fn apply(&mut self, updates: Vec<SegUpdate>) {
        for u in updates {
            let seg = self.segments.entry(u.base).or_insert_with(|| Segment {
                file: u.file.clone(),
                path: u.path.clone(),
                len: 0,
                count: 0,
                pos: u.pos,
                marks: Vec::new(),
            });
            seg.len = u.len;
            seg.count = u.count;
            seg.marks.extend(u.marks);
        }
    }

    /// Forget every segment whose records are all below `seq`, except the
    /// last; returns their files for the caller to delete (outside the
    /// lock).
    pub fn remove_below(&mut self, seq: u64) -> Vec<PathBuf> {
        let mut gone = Vec::new();
        while self.segments.len() > 1 {
            let Some(mut entry) = self.segments.first_entry() else {
                break;
            };
            if *entry.key() + entry.get_mut().count > seq {
                break;
            }
            gone.push(entry.remove().path);
        }
        gone
    }

    /// Would [`LogIndex::remove_below`] remove anything?
    pub fn removable_below(&self, seq: u64) -> bool {
        self.segments.len() > 1
            && self
                .segments
                .iter()
                .next()
                .is_some_and(|(base, s)| base + s.count <= seq)
    }

    /// Number of segment files.
    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Marks held in memory (for tests of the memory bound).
    #[cfg(test)]
    pub fn mark_count(&self) -> usize {
        self.segments.values().map(|s| s.marks.len()).sum()
    }
}

impl Span {
    /// Records from `from` on (at least one if there is one), at most
    /// `max_count` and, past the first, about `max_bytes` of payload.
    pub fn read(&self, from: u64, max_count: usize, max_bytes: u64) -> io::Result<Vec<Rec>> {
        self.read_map(from, max_count, max_bytes, |seq, pos, data| Rec {
            seq,
            pos,
            data: data.to_vec(),
        })
    }

    /// [`Span::read`], turning each record into a `T` straight from the
    /// read buffer (`seq`, position, payload after the seq): a caller that
    /// decodes records copies each body once, not twice.
    pub fn read_map<T>(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: u64,
        mut map: impl FnMut(u64, u64, &[u8]) -> T,
    ) -> io::Result<Vec<T>> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let chunk = max_bytes.saturating_add(MARK_BYTES * 2).min(CHUNK * 4);
        let walked = walk(
            &self.file,
            self.offset,
            self.end,
            self.seq,
            self.pos,
            chunk,
            &mut |seq, pos, data| {
                if seq < from {
                    return true;
                }
                if out.len() >= max_count
                    || (!out.is_empty() && bytes + data.len() as u64 > max_bytes)
                {
                    return false;
                }
                bytes += data.len() as u64;
                out.push(map(seq, pos, data));
                true
            },
        )?;
        self.check(walked)?;
        Ok(out)
    }

    /// Position of record `seq` in the log's byte stream (`seq` may be the
    /// segment's end).
    pub fn pos_of(&self, seq: u64) -> io::Result<u64> {
        let mut found = None;
        let walked = walk(
            &self.file,
            self.offset,
            self.end,
            self.seq,
            self.pos,
            MARK_BYTES * 2,
            &mut |s, pos, _| {
                if s == seq {
                    found = Some(pos);
                    return false;
                }
                true
            },
        )?;
        let end = self.check(walked)?;
        Ok(found.unwrap_or(end))
    }

    fn check(&self, walked: Walked) -> io::Result<u64> {
        match walked {
            Walked::Done { pos, .. } => Ok(pos),
            Walked::Bad { offset, why, .. } => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} at offset {offset}: {why}", self.path.display()),
            )),
        }
    }
}

/// What a segment's update after a commit holds.
pub struct SegUpdate {
    base: u64,
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    count: u64,
    pos: u64,
    /// Marks added by this commit.
    marks: Vec<Mark>,
}

/// The segment being appended to, as the writer sees it.
struct Active {
    base: u64,
    file: Arc<File>,
    path: PathBuf,
    /// Committed length and records.
    len: u64,
    count: u64,
    pos: u64,
    last_mark: Mark,
    /// Created in the batch being written (deleted on rollback).
    new: bool,
}

/// The writer's side of a log: appends and commits batches.
pub struct Appender {
    dir: PathBuf,
    segment_bytes: u64,
    fsync: bool,
    active: Active,
    /// Records appended to `active` and not yet committed.
    buf: Vec<u8>,
    buf_count: u64,
    marks: Vec<Mark>,
    /// Segments sealed during this batch (written, fsynced, not published).
    sealed: Vec<SegUpdate>,
    /// `active` as it was at the last commit, for a rollback.
    committed: Option<Active>,
    /// Bytes appended since the last commit.
    pending_bytes: u64,
    /// Written since the last sync.
    unsynced: bool,
}

impl Appender {
    /// What readers learn about the active segment when `len` bytes and
    /// `count` records of it are durable, with the marks added since.
    fn update(&mut self, len: u64, count: u64) -> SegUpdate {
        SegUpdate {
            base: self.active.base,
            file: self.active.file.clone(),
            path: self.active.path.clone(),
            len,
            count,
            pos: self.active.pos,
            marks: std::mem::take(&mut self.marks),
        }
    }

    /// The seq the next appended record gets.
    pub fn next(&self) -> u64 {
        self.active.base + self.active.count + self.buf_count
    }

    /// Bytes appended and not yet committed.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Append one record; `fill` writes its payload (after the seq, which
    /// this adds) into the buffer. Returns its seq.
    pub fn append(&mut self, fill: impl FnOnce(&mut Vec<u8>)) -> io::Result<u64> {
        let used = self.active.len + self.buf.len() as u64;
        if used > 0 && used >= self.segment_bytes {
            self.roll()?;
        }
        let seq = self.next();
        let offset = self.active.len + self.buf.len() as u64;
        let m = self.marks.last().copied().unwrap_or(self.active.last_mark);
        if seq - m.seq >= MARK_RECORDS || offset - m.offset >= MARK_BYTES {
            self.marks.push(Mark { seq, offset });
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER as usize]);
        self.buf.extend_from_slice(&seq.to_le_bytes());
        fill(&mut self.buf);
        let payload = &self.buf[start + HEADER as usize..];
        let len = payload.len() as u64;
        if len > MAX_PAYLOAD {
            self.buf.truncate(start);
            self.marks.retain(|m| m.seq != seq);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record of {len} bytes is over the limit of {MAX_PAYLOAD}"),
            ));
        }
        let crc = crc32fast::hash(payload);
        self.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.buf_count += 1;
        self.pending_bytes += HEADER + len;
        Ok(seq)
    }

    /// Seal the active segment and start the next one.
    fn roll(&mut self) -> io::Result<()> {
        self.snapshot();
        write_all_at(&self.active.file, &self.buf, self.active.len)?;
        if self.fsync {
            // Sealed data is durable before the next segment exists, so
            // only the last segment can ever have a torn tail.
            self.active.file.sync_data()?;
        }
        let base = self.next();
        let len = self.active.len + self.buf.len() as u64;
        let count = self.active.count + self.buf_count;
        let sealed = self.update(len, count);
        self.sealed.push(sealed);
        let path = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mark = Mark {
            seq: base,
            offset: 0,
        };
        self.active = Active {
            base,
            file: Arc::new(file),
            path,
            len: 0,
            count: 0,
            pos: self.active.pos + len,
            last_mark: mark,
            new: true,
        };
        self.marks = vec![mark];
        self.buf.clear();
        self.buf_count = 0;
        Ok(())
    }

    fn snapshot(&mut self) {
        if self.committed.is_none() {
            self.committed = Some(Active {
                file: self.active.file.clone(),
                path: self.active.path.clone(),
                new: false,
                ..self.active
            });
        }
    }

    /// Write and (with fsync) sync everything appended since the last
    /// commit; returns what to publish to the index. On error, call
    /// [`Appender::rollback`].
    pub fn commit(&mut self) -> io::Result<Vec<SegUpdate>> {
        let updates = self.write_out()?;
        self.sync()?;
        Ok(updates)
    }

    /// The first half of [`Appender::commit`]: write what was appended
    /// (to the page cache), not yet synced; returns what to publish. A
    /// caller that publishes it before [`Appender::sync`] lets readers see
    /// records that a power loss may still take away (the outbox's early
    /// send, see `writer`). On error, call [`Appender::rollback`].
    pub fn write_out(&mut self) -> io::Result<Vec<SegUpdate>> {
        if self.buf_count == 0 && self.sealed.is_empty() {
            return Ok(Vec::new());
        }
        self.snapshot();
        if let Some(e) = injected_fault(&self.dir) {
            return Err(e);
        }
        write_all_at(&self.active.file, &self.buf, self.active.len)?;
        self.unsynced = true;
        self.active.len += self.buf.len() as u64;
        self.active.count += self.buf_count;
        if let Some(m) = self.marks.last() {
            self.active.last_mark = *m;
        }
        let mut updates = std::mem::take(&mut self.sealed);
        updates.push(self.update(self.active.len, self.active.count));
        self.buf.clear();
        self.buf_count = 0;
        self.pending_bytes = 0;
        Ok(updates)
    }

    /// The second half of [`Appender::commit`]: make what was written
    /// durable (with fsync). Then there is nothing to roll back.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced && self.fsync {
            self.active.file.sync_data()?;
            if self.active.new {
                sync_dir(&self.dir)?;
            }
        }
        self.unsynced = false;
        self.active.new = false;
        self.committed = None;
        Ok(())
    }

    /// Undo everything since the last commit: cut the files back and
    /// delete segments created since. An error here leaves the log in an
    /// unknown state; the journal stops taking writes.
    pub fn rollback(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.buf_count = 0;
        self.marks.clear();
        self.pending_bytes = 0;
        let sealed = std::mem::take(&mut self.sealed);
        let Some(committed) = self.committed.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        if self.active.new {
            result = result.and(std::fs::remove_file(&self.active.path));
        }
        for s in sealed.iter().skip(1) {
            result = result.and(std::fs::remove_file(&s.path));
        }
        result = result.and(committed.file.set_len(committed.len));
        if self.fsync {
            // The undo is durable too: a batch reported as failed must not
            // come back after a crash (its bytes may have reached the disk).
            result = result.and(committed.file.sync_all());
            if self.active.new || sealed.len() > 1 {
                result = result.and(sync_dir(&self.dir));
            }
        }
        self.active = committed;
        result
    }
}

/// Open (or create) the log in `dir`; an empty log starts at seq `start`.
/// `visit` sees every record kept, in order: (seq, payload after the seq).
pub fn open(
    dir: &Path,
    start: u64,
    segment_bytes: u64,
    fsync: bool,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> io::Result<(LogIndex, Appender)> {
    std::fs::create_dir_all(dir)?;
    let mut bases = segment_bases(dir)?;
    if bases.is_empty() {
        let path = segment_path(dir, start);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if fsync {
            sync_dir(dir)?;
        }
        bases.push(start);
    }
    let mut index = LogIndex {
        segments: BTreeMap::new(),
    };
    let mut pos = 0u64;
    let mut expected = None;
    let last = bases.len() - 1;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        if let Some(e) = expected
            && e != base
        {
            return Err(corrupt(format!(
                "{}: segment should start at record {e} (records are missing)",
                path.display()
            )));
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        let mut marks = vec![Mark {
            seq: base,
            offset: 0,
        }];
        let walked = walk(&file, 0, size, base, pos, CHUNK * 4, &mut |seq, p, data| {
            let offset = p - pos;
            let m = marks[marks.len() - 1];
            if seq - m.seq >= MARK_RECORDS || offset - m.offset >= MARK_BYTES {
                marks.push(Mark { seq, offset });
            }
            visit(seq, data);
            true
        })?;
        let (len, count) = match walked {
            Walked::Done { offset, seq, .. } => (offset, seq - base),
            Walked::Bad {
                offset, seq, why, ..
            } if i == last && next_valid(&file, offset, size, seq)?.is_none() => {
                tracing::warn!(
                    "journal: {}: cutting a torn tail of {} bytes at offset {offset} ({why}); \
                     it was never acknowledged",
                    path.display(),
                    size - offset
                );
                file.set_len(offset)?;
                file.sync_all()?;
                (offset, seq - base)
            }
            Walked::Bad {
                offset, seq, why, ..
            } => {
                let after = if i == last {
                    "valid records follow it"
                } else {
                    "it is in a sealed segment"
                };
                return Err(corrupt(format!(
                    "{} is damaged at offset {offset} (record {seq}: {why}) and {after}, so this \
                     is not a torn write but disk corruption",
                    path.display()
                )));
            }
        };
        marks.retain(|m| m.seq < base + count || m.seq == base);
        let last_mark = marks[marks.len() - 1];
        expected = Some(base + count);
        index.segments.insert(
            base,
            Segment {
                file: Arc::new(file),
                path,
                len,
                count,
                pos,
                marks,
            },
        );
        if i == last {
            let seg = &index.segments[&base];
            let active = Active {
                base,
                file: seg.file.clone(),
                path: seg.path.clone(),
                len,
                count,
                pos,
                last_mark,
                new: false,
            };
            let appender = Appender {
                dir: dir.to_path_buf(),
                segment_bytes,
                fsync,
                active,
                buf: Vec::new(),
                buf_count: 0,
                marks: Vec::new(),
                sealed: Vec::new(),
                committed: None,
                pending_bytes: 0,
                unsynced: false,
            };
            return Ok((index, appender));
        }
        pos += len;
    }
    Err(corrupt("no segments".into()))
}

fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SUFFIX}"))
}

/// The base seqs of the segments in `dir`, sorted.
pub(super) fn segment_bases(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(SUFFIX)
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Is this record payload (after the seq) a tombstone: a record lost to
/// damage and dropped by `peerd journal repair`? Real records always
/// carry fields, so an empty payload cannot be one.
pub fn is_tombstone(data: &[u8]) -> bool {
    data.is_empty()
}

/// Bytes of one tombstone record on disk.
pub(super) const TOMBSTONE_BYTES: u64 = HEADER + SEQ_BYTES as u64;

/// A tombstone for record `seq`, as it is on disk.
pub(super) fn tombstone(seq: u64) -> [u8; TOMBSTONE_BYTES as usize] {
    let payload = seq.to_le_bytes();
    let mut out = [0u8; TOMBSTONE_BYTES as usize];
    out[..4].copy_from_slice(&(SEQ_BYTES as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out[8..].copy_from_slice(&payload);
    out
}

/// After a bad record (record `bad_seq` at `offset`), the first valid
/// record later in the segment, as (offset, seq): one whose length is
/// possible, whose seq is one a later record could have (records are at
/// least [`TOMBSTONE_BYTES`] long) and whose CRC matches. `None` means
/// nothing valid follows: a torn tail, not corruption.
pub(super) fn next_valid(
    file: &File,
    offset: u64,
    end: u64,
    bad_seq: u64,
) -> io::Result<Option<(u64, u64)>> {
    let start = offset + 1;
    if end <= start + TOMBSTONE_BYTES {
        return Ok(None);
    }
    let mut buf = vec![0u8; (end - start) as usize];
    read_exact_at(file, &mut buf, start)?;
    let min = TOMBSTONE_BYTES as usize;
    for i in 0..=buf.len() - min {
        let len = u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as u64;
        if len < SEQ_BYTES as u64
            || len > MAX_PAYLOAD
            || (i + HEADER as usize) as u64 + len > buf.len() as u64
        {
            continue;
        }
        let mut s = [0u8; SEQ_BYTES];
        s.copy_from_slice(&buf[i + 8..i + 16]);
        let seq = u64::from_le_bytes(s);
        let most = bad_seq.saturating_add(1 + (i as u64 + 1) / TOMBSTONE_BYTES);
        if seq <= bad_seq || seq > most {
            continue;
        }
        let payload = &buf[i + 8..i + 8 + len as usize];
        let crc = u32::from_le_bytes([buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]]);
        if crc32fast::hash(payload) == crc {
            return Ok(Some((start + i as u64, seq)));
        }
    }
    Ok(None)
}

/// Where a walk stopped.
pub(super) enum Walked {
    /// At a record the visitor declined, or at `end`.
    Done { offset: u64, seq: u64, pos: u64 },
    /// At a record that is not whole and valid.
    Bad { offset: u64, seq: u64, why: String },
}

/// Walk the records of a segment `file` from `offset` (where record `seq`
/// starts) up to `end`, checking each. `visit(seq, pos, payload after the
/// seq)` gets each record's position in the log's byte stream (`seg_pos +
/// offset`) and returns false to stop before that record.
pub(super) fn walk(
    file: &File,
    mut offset: u64,
    end: u64,
    mut seq: u64,
    seg_pos: u64,
    chunk: u64,
    visit: &mut dyn FnMut(u64, u64, &[u8]) -> bool,
) -> io::Result<Walked> {
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = offset;
    let chunk = chunk.max(HEADER * 2);
    loop {
        if offset >= end {
            return Ok(Walked::Done {
                offset,
                seq,
                pos: seg_pos + offset,
            });
        }
        let bad = |why: &str| {
            Ok(Walked::Bad {
                offset,
                seq,
                why: why.to_string(),
            })
        };
        if end - offset < HEADER {
            return bad("truncated header");
        }
        if offset + HEADER > buf_at + buf.len() as u64 {
            buf_at = offset;
            fill(file, &mut buf, offset, chunk.min(end - offset))?;
        }
        let h = (offset - buf_at) as usize;
        let len = u32::from_le_bytes([buf[h], buf[h + 1], buf[h + 2], buf[h + 3]]) as u64;
        let crc = u32::from_le_bytes([buf[h + 4], buf[h + 5], buf[h + 6], buf[h + 7]]);
        if len < SEQ_BYTES as u64 || len > MAX_PAYLOAD {
            return bad(&format!("impossible record length {len}"));
        }
        let total = HEADER + len;
        if end - offset < total {
            return bad("truncated record");
        }
        if offset + total > buf_at + buf.len() as u64 {
            buf_at = offset;
            fill(file, &mut buf, offset, chunk.max(total).min(end - offset))?;
        }
        let p = (offset - buf_at) as usize + HEADER as usize;
        let payload = &buf[p..p + len as usize];
        if crc32fast::hash(payload) != crc {
            return bad("CRC mismatch");
        }
        let mut s = [0u8; SEQ_BYTES];
        s.copy_from_slice(&payload[..SEQ_BYTES]);
        let got = u64::from_le_bytes(s);
        if got != seq {
            return bad(&format!("record says seq {got}, expected {seq}"));
        }
        if !visit(seq, seg_pos + offset, &payload[SEQ_BYTES..]) {
            return Ok(Walked::Done {
                offset,
                seq,
                pos: seg_pos + offset,
            });
        }
        offset += total;
        seq += 1;
    }
}

fn fill(file: &File, buf: &mut Vec<u8>, offset: u64, n: u64) -> io::Result<()> {
    buf.resize(n as usize, 0);
    read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// The fault-injection seam the end-to-end tests arm: when peerd was
/// started with `PEERD_FAULT_FILE=<path>` and that file exists, each line
/// `<log> <errno>` (`inbox EIO`, `outbox ENOSPC`, `inbox EROFS`) makes
/// every commit of that log fail with that error, as a failing disk would,
/// until the line is gone. Unset (always, outside tests), it costs one
/// check of a `OnceLock`.
fn injected_fault(dir: &Path) -> Option<io::Error> {
    static FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let file = FILE
        .get_or_init(|| std::env::var_os("PEERD_FAULT_FILE").map(PathBuf::from))
        .as_ref()?;
    let text = std::fs::read_to_string(file).ok()?;
    let log = dir.file_name()?.to_str()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some(log) {
            return None;
        }
        let errno = match words.next()? {
            "EIO" => 5,
            "ENOSPC" => 28,
            "EROFS" => 30,
            _ => return None,
        };
        Some(io::Error::from_raw_os_error(errno))
    })
}

/// Make a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_n(a: &mut Appender, idx: &mut LogIndex, from: u64, n: u64, size: usize) {
        for i in from..from + n {
            a.append(|b| {
                b.extend_from_slice(&i.to_le_bytes());
                b.resize(b.len() + size, 7);
            })
            .unwrap();
        }
        idx.apply(a.commit().unwrap());
    }

    fn read_all(idx: &LogIndex) -> Vec<u64> {
        let mut out = Vec::new();
        let mut next = idx.first();
        while let Some(span) = idx.span(next) {
            let recs = span.read(next, usize::MAX, 1 << 20).unwrap();
            for r in &recs {
                assert_eq!(r.data[..8], r.seq.to_le_bytes());
                out.push(r.seq);
            }
            next = recs.last().unwrap().seq + 1;
        }
        out
    }

    fn reopen(dir: &Path) -> (LogIndex, Appender, Vec<u64>) {
        let mut seen = Vec::new();
        let (i, a) = open(dir, 1, 4096, true, &mut |s, _| seen.push(s)).unwrap();
        (i, a, seen)
    }

    #[test]
    fn appends_roll_read_back_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut idx, mut a, seen) = reopen(tmp.path());
        assert!(seen.is_empty());
        assert_eq!((idx.first(), idx.next()), (1, 1));
        append_n(&mut a, &mut idx, 1, 500, 40);
        assert!(idx.segment_count() > 5, "{}", idx.segment_count());
        assert_eq!(read_all(&idx), (1..=500).collect::<Vec<_>>());
        // Reading from the middle finds the record through the marks.
        let span = idx.span(321).unwrap();
        assert_eq!(span.read(321, 1, 0).unwrap()[0].seq, 321);
        let p = span.pos_of(321).unwrap();
        assert_eq!(span.read(321, 1, 0).unwrap()[0].pos, p);
        drop((idx, a));
        let (mut idx, mut a, seen) = reopen(tmp.path());
        assert_eq!(seen, (1..=500).collect::<Vec<_>>());
        assert_eq!(idx.next(), 501);
        append_n(&mut a, &mut idx, 501, 10, 40);
        assert_eq!(read_all(&idx).len(), 510);
        // Trimming keeps the last segment whatever happens.
        let gone = idx.remove_below(u64::MAX);
        for p in &gone {
            std::fs::remove_file(p).unwrap();
        }
        assert_eq!(idx.segment_count(), 1);
        assert_eq!(idx.next(), 511);
        drop((idx, a));
        let (idx, _a, _) = reopen(tmp.path());
        assert_eq!(idx.next(), 511, "numbering survives a trim to one segment");
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_at_the_last_whole_record() {
        type Damage = fn(&Path);
        let cases: [(&str, Damage, u64); 5] = [
            (
                "half a record",
                |p| {
                    let len = std::fs::metadata(p).unwrap().len();
                    OpenOptions::new()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(len - 5)
                        .unwrap();
                },
                9,
            ),
            (
                "half a header",
                |p| {
                    let f = OpenOptions::new().append(true).open(p).unwrap();
                    write_all_at(&f, &[1, 2, 3], f.metadata().unwrap().len()).unwrap();
                },
                10,
            ),
            (
                "zeros",
                |p| {
                    let f = OpenOptions::new().append(true).open(p).unwrap();
                    write_all_at(&f, &[0; 4096], f.metadata().unwrap().len()).unwrap();
                },
                10,
            ),
            (
                "flipped byte",
                |p| {
                    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
                    let len = f.metadata().unwrap().len();
                    write_all_at(&f, &[0xff], len - 2).unwrap();
                },
                9,
            ),
            (
                "garbage length",
                |p| {
                    let f = OpenOptions::new().append(true).open(p).unwrap();
                    write_all_at(&f, &[0xff; 12], f.metadata().unwrap().len()).unwrap();
                },
                10,
            ),
        ];
        for (what, damage, kept) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let (mut idx, mut a, _) = reopen(tmp.path());
            append_n(&mut a, &mut idx, 1, 10, 10);
            drop((idx, a));
            damage(&last_segment(tmp.path()));
            let (mut idx, mut a, seen) = reopen(tmp.path());
            assert_eq!(seen.len() as u64, kept, "{what}");
            assert_eq!(idx.next(), kept + 1, "{what}");
            // Appending goes on from there, and reopens cleanly.
            append_n(&mut a, &mut idx, kept + 1, 3, 10);
            drop((idx, a));
            let (idx, _, seen) = reopen(tmp.path());
            assert_eq!(seen, (1..=kept + 3).collect::<Vec<_>>(), "{what}");
            assert_eq!(read_all(&idx), seen, "{what}");
        }
    }

    #[test]
    fn damage_in_a_sealed_segment_refuses_to_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut idx, mut a, _) = reopen(tmp.path());
        append_n(&mut a, &mut idx, 1, 300, 40);
        drop((idx, a));
        let first = tmp.path().join(format!("{:020}.log", 1));
        let f = OpenOptions::new().write(true).open(&first).unwrap();
        write_all_at(&f, &[0xee; 4], 100).unwrap();
        let e = open(tmp.path(), 1, 4096, true, &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("00000000000000000001.log") && e.contains("corruption"),
            "{e}"
        );
        // A missing middle segment is refused too.
        let tmp = tempfile::tempdir().unwrap();
        let (mut idx, mut a, _) = reopen(tmp.path());
        append_n(&mut a, &mut idx, 1, 300, 40);
        drop((idx, a));
        let mut segs: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segs.sort();
        std::fs::remove_file(&segs[1]).unwrap();
        let e = open(tmp.path(), 1, 4096, true, &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn rollback_leaves_the_log_as_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut idx, mut a, _) = reopen(tmp.path());
        append_n(&mut a, &mut idx, 1, 5, 10);
        let segs = idx.segment_count();
        for i in 0..300u64 {
            a.append(|b| {
                b.extend_from_slice(&(i + 6).to_le_bytes());
                b.resize(b.len() + 40, 1);
            })
            .unwrap();
        }
        a.rollback().unwrap();
        assert_eq!(a.next(), 6);
        append_n(&mut a, &mut idx, 6, 2, 10);
        assert_eq!(idx.segment_count(), segs);
        drop((idx, a));
        let (idx, _, seen) = reopen(tmp.path());
        assert_eq!(seen, (1..=7).collect::<Vec<_>>());
        assert_eq!(idx.segment_count(), segs);
    }
}
