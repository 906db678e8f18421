//! What the journal's records hold, after the seq the log puts first (see
//! `log`). Fixed little-endian fields, so the on-disk format never depends
//! on a serialization library's choices.
//!
//! | log    | payload after the seq                                              |
//! |--------|--------------------------------------------------------------------|
//! | outbox | sent_ms u64, [to: n u8, n × (len u8, name)], body                 |
//! | inbox  | received_ms u64, sent_ms u64, origin_epoch u64, origin_seq u64, origin_len u8, origin, body |
//!
//! An outbox record is for every peer unless the top bit of `sent_ms` is
//! set (journal layout 2): then the list of peers it is addressed to
//! (`send --to`) follows. Layout 1 records (no such bit) are for every
//! peer, as they were. The next bit marks a *void* record, for no peer: a
//! number reserved before a crash and not used (see `writer`).
//!
//! An inbox record from a peer carries the peer's epoch and seq: the record
//! is itself the "next expected from this peer" update, so storing the
//! message and moving that number are one write. Local messages (plain
//! WebSocket clients) have origin_epoch 0.
//!
//! The top bit of `origin_len` marks a **notice** (journal layout 2), not
//! a message: the peer's records `first..=origin_seq` of `origin_epoch`
//! will not come. Its body is `first` (u64), then a kind byte: none for a
//! *loss notice* (the peer said they are gone: `peerd journal repair` or
//! `peerctl drop` dropped them, or our inbox went back in time past what it
//! still holds), 1 for a *skip notice* (they were addressed to other peers,
//! `send --to`). Like any inbox record it moves "next expected" past them,
//! in one write; readers (`tail`, plain clients) skip it; a loss is counted. Origins are
//! at most 127 bytes (node names are at most 32, `client:<addr>` ~60).
//! A record whose payload is empty is a tombstone (see `log`).

use peerlink::control::Entry;

#[cfg(test)]
use crate::wire::Record;

/// Flag in an outbox record's `sent_ms`: a list of destinations follows.
const ADDRESSED: u64 = 1 << 63;
/// Flag in an outbox record's `sent_ms`: a *void* record, for no peer: a
/// number reserved before a crash and never used (see `writer`).
const VOID: u64 = 1 << 62;

/// Encode a void outbox record.
pub fn put_void(buf: &mut Vec<u8>, now_ms: u64) {
    buf.extend_from_slice(&(now_ms | VOID).to_le_bytes());
}

/// Encode an outbox message, for every peer (`to` empty) or for those in
/// `to` (at most 255 names of at most 255 bytes: config names are short).
pub fn put_outbox(buf: &mut Vec<u8>, sent_ms: u64, to: &[String], body: &[u8]) {
    if to.is_empty() {
        buf.extend_from_slice(&sent_ms.to_le_bytes());
    } else {
        buf.extend_from_slice(&(sent_ms | ADDRESSED).to_le_bytes());
        let n = to.len().min(255);
        buf.push(n as u8);
        for name in &to[..n] {
            let len = name.len().min(255);
            buf.push(len as u8);
            buf.extend_from_slice(&name.as_bytes()[..len]);
        }
    }
    buf.extend_from_slice(body);
}

/// An outbox record's fields, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxView<'a> {
    pub sent_ms: u64,
    /// The encoded destination list (empty: every peer).
    to: &'a [u8],
    pub body: &'a [u8],
    /// A void record: for no peer.
    pub void: bool,
}

impl OutboxView<'_> {
    /// Is it for `peer`?
    pub fn is_for(&self, peer: &str) -> bool {
        !self.void && (self.to.is_empty() || self.names().any(|n| n == peer.as_bytes()))
    }

    /// Is it addressed (not for every peer)?
    pub fn is_addressed(&self) -> bool {
        !self.to.is_empty()
    }

    /// The names it is addressed to.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest = self.to.get(1..).unwrap_or_default();
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let name = tail.get(..len as usize)?;
            rest = &tail[len as usize..];
            Some(name)
        })
    }
}

/// Decode an outbox record's fields.
pub fn view_outbox(data: &[u8]) -> Option<OutboxView<'_>> {
    let (raw, rest) = take_u64(data)?;
    if raw & VOID != 0 {
        return Some(OutboxView {
            sent_ms: raw & !(VOID | ADDRESSED),
            to: &[],
            body: rest,
            void: true,
        });
    }
    if raw & ADDRESSED == 0 {
        return Some(OutboxView {
            sent_ms: raw,
            to: &[],
            body: rest,
            void: false,
        });
    }
    let (&n, mut after) = rest.split_first()?;
    for _ in 0..n {
        let (&len, tail) = after.split_first()?;
        after = tail.get(len as usize..)?;
    }
    let to_len = rest.len() - after.len();
    Some(OutboxView {
        sent_ms: raw & !ADDRESSED,
        to: &rest[..to_len],
        body: after,
        void: false,
    })
}

/// Decode an outbox message numbered `seq`.
#[cfg(test)]
pub fn get_outbox(seq: u64, data: &[u8]) -> Option<Record> {
    let v = view_outbox(data)?;
    Some(Record {
        seq,
        sent_ms: v.sent_ms,
        body: v.body.to_vec(),
    })
}

/// The fields of an inbox record besides its body and seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxMeta<'a> {
    pub received_ms: u64,
    pub sent_ms: u64,
    pub origin_epoch: u64,
    pub origin_seq: u64,
    pub origin: &'a str,
    /// A loss notice, not a message (see the module doc).
    pub lost: bool,
}

/// Flag in `origin_len`: a loss notice.
const LOST_FLAG: u8 = 0x80;
/// Longest origin kept.
const MAX_ORIGIN: usize = 127;

/// Encode an inbox message.
pub fn put_inbox(buf: &mut Vec<u8>, m: &InboxMeta<'_>, body: &[u8]) {
    buf.extend_from_slice(&m.received_ms.to_le_bytes());
    buf.extend_from_slice(&m.sent_ms.to_le_bytes());
    buf.extend_from_slice(&m.origin_epoch.to_le_bytes());
    buf.extend_from_slice(&m.origin_seq.to_le_bytes());
    let mut n = m.origin.len().min(MAX_ORIGIN);
    while !m.origin.is_char_boundary(n) {
        n -= 1;
    }
    buf.push(n as u8 | if m.lost { LOST_FLAG } else { 0 });
    buf.extend_from_slice(&m.origin.as_bytes()[..n]);
    buf.extend_from_slice(body);
}

/// Decode an inbox record's fields; returns them and the body.
pub fn get_inbox_meta(data: &[u8]) -> Option<(InboxMeta<'_>, &[u8])> {
    let (received_ms, rest) = take_u64(data)?;
    let (sent_ms, rest) = take_u64(rest)?;
    let (origin_epoch, rest) = take_u64(rest)?;
    let (origin_seq, rest) = take_u64(rest)?;
    let (&flags, rest) = rest.split_first()?;
    let n = (flags & !LOST_FLAG) as usize;
    let origin = std::str::from_utf8(rest.get(..n)?).ok()?;
    let body = &rest[n..];
    Some((
        InboxMeta {
            received_ms,
            sent_ms,
            origin_epoch,
            origin_seq,
            origin,
            lost: flags & LOST_FLAG != 0,
        },
        body,
    ))
}

/// Encode a loss notice: `origin`'s records `first..=m.origin_seq` are gone.
pub fn put_lost(buf: &mut Vec<u8>, m: &InboxMeta<'_>, first: u64) {
    put_inbox(buf, &InboxMeta { lost: true, ..*m }, &first.to_le_bytes());
}

/// Encode a skip notice: `origin`'s records `first..=m.origin_seq` are
/// for other peers (`send --to`); nothing is lost.
pub fn put_skip(buf: &mut Vec<u8>, m: &InboxMeta<'_>, first: u64) {
    let mut body = first.to_le_bytes().to_vec();
    body.push(SKIP);
    put_inbox(buf, &InboxMeta { lost: true, ..*m }, &body);
}

/// Kind byte after `first` in a notice's body: the records were for
/// others. (No kind byte: they are lost.)
const SKIP: u8 = 1;

/// The first lost seq of a loss notice's body, and how many were lost;
/// `None` for a skip notice.
pub fn lost_range(m: &InboxMeta<'_>, body: &[u8]) -> Option<(u64, u64)> {
    let (first, kind) = take_u64(body)?;
    if kind.first() == Some(&SKIP) {
        return None;
    }
    let n = m.origin_seq.checked_add(1)?.checked_sub(first)?;
    Some((first, n))
}

/// Decode an inbox record numbered `seq` as `tail` shows it; `Some(None)`
/// for a record that is not a message (a loss notice or a tombstone).
pub fn get_inbox(seq: u64, data: &[u8]) -> Option<Option<Entry>> {
    if super::log::is_tombstone(data) {
        return Some(None);
    }
    let (m, body) = get_inbox_meta(data)?;
    if m.lost {
        return Some(None);
    }
    Some(Some(Entry {
        seq,
        received_ms: m.received_ms,
        sent_ms: m.sent_ms,
        origin: m.origin.to_string(),
        origin_seq: m.origin_seq,
        body: body.to_vec(),
    }))
}

fn take_u64(data: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = data.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_short_data() {
        let mut b = Vec::new();
        put_outbox(&mut b, 5, &[], b"hi");
        assert_eq!(
            get_outbox(3, &b),
            Some(Record {
                seq: 3,
                sent_ms: 5,
                body: b"hi".to_vec()
            })
        );
        assert_eq!(get_outbox(3, &b[..7]), None);
        let m = InboxMeta {
            received_ms: 1,
            sent_ms: 2,
            origin_epoch: 3,
            origin_seq: 4,
            origin: "client:127.0.0.1:5",
            lost: false,
        };
        let mut b = Vec::new();
        put_inbox(&mut b, &m, b"body");
        assert_eq!(get_inbox_meta(&b), Some((m, &b"body"[..])));
        let e = get_inbox(9, &b).unwrap().unwrap();
        assert_eq!((e.seq, e.origin.as_str(), e.origin_seq), (9, m.origin, 4));
        for cut in 0..b.len() - 4 {
            assert_eq!(get_inbox_meta(&b[..cut]), None, "cut at {cut}");
        }
        // A loss notice decodes with its range and is no message.
        let notice = InboxMeta {
            origin: "a",
            origin_seq: 20,
            ..m
        };
        let mut b = Vec::new();
        put_lost(&mut b, &notice, 11);
        let (back, body) = get_inbox_meta(&b).unwrap();
        assert!(back.lost && back.origin == "a");
        assert_eq!(lost_range(&back, body), Some((11, 10)));
        assert_eq!(get_inbox(3, &b), Some(None));
        assert_eq!(get_inbox(3, &[]), Some(None), "a tombstone");
    }
}

#[cfg(test)]
mod addressing {
    use super::*;

    #[test]
    fn addressed_records_say_whom_they_are_for_and_old_ones_are_for_all() {
        let mut b = Vec::new();
        put_outbox(&mut b, 7, &["b".into(), "node-10".into()], b"body");
        let v = view_outbox(&b).unwrap();
        assert_eq!((v.sent_ms, v.body), (7, &b"body"[..]));
        assert!(v.is_addressed() && v.is_for("b") && v.is_for("node-10"));
        assert!(!v.is_for("c") && !v.is_for("node-1"));
        assert_eq!(get_outbox(3, &b).unwrap().body, b"body");
        // A layout-1 record: sent_ms then the body, for everyone.
        let mut old = 1_795_000_000_000u64.to_le_bytes().to_vec();
        old.extend_from_slice(b"x");
        let v = view_outbox(&old).unwrap();
        assert!(!v.is_addressed() && v.is_for("anyone"));
        assert_eq!((v.sent_ms, v.body), (1_795_000_000_000, &b"x"[..]));
        // Truncated lists are refused, not misread.
        for cut in 8..b.len() - 4 {
            if let Some(v) = view_outbox(&b[..cut]) {
                assert!(v.body.len() < 4, "cut at {cut}");
            }
        }
    }
}
