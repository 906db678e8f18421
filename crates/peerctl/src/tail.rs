//! `peerctl tail`: print inbox entries, one per line. Colour only when
//! stdout is a terminal and `NO_COLOR` is not set; `--json` is never
//! coloured.
//!
//! Lines are formatted into one buffer ([`Printer`]) and written out once
//! per batch the daemon sends (and every [`WRITE_CHUNK`] bytes within a
//! large batch), so a line is never held back longer than it takes to
//! format its batch, and there is no write per line. The fast paths: a
//! batch is read in place from the frame ([`entries_view`]), a body that
//! needs no escaping is copied as is, the time text is reused within one
//! millisecond (its date part within one day), and the buffers are reused,
//! so nothing is allocated per line.

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};

use peerlink::codec;
use peerlink::control::{EntryRef, Request, Response, TailStart, entries_view};

use crate::cli::TailArgs;
use crate::client::{Client, Target};
use crate::error::CtlError;

/// Formatted bytes written out at once, at most, within one batch.
pub const WRITE_CHUNK: usize = 64 * 1024;

pub async fn run(target: &Target, args: TailArgs) -> Result<(), CtlError> {
    let mut client = Client::connect(target).await?;
    let start = match args.from {
        Some(seq) => TailStart::From(seq),
        None => TailStart::Last(args.lines),
    };
    client
        .send(&Request::Tail {
            start,
            follow: args.follow,
            origin: args.from_peer.clone(),
        })
        .await?;
    let stdout = std::io::stdout();
    let format = if args.json {
        Format::Json
    } else if crate::colour(&stdout) {
        Format::Styled
    } else {
        Format::Text
    };
    let mut printer = Printer::new(format);
    // On a terminal, an empty answer is said out loud (never in a pipe).
    let mut shown = 0usize;
    let mut said_empty = !stdout.is_terminal();
    loop {
        let frame = client.recv_frame().await?;
        if let Some(entries) = entries_view(&frame) {
            let entries = entries.map_err(|e| CtlError::Protocol(e.to_string()))?;
            shown += entries.len();
            let mut out = stdout.lock();
            for e in &entries {
                printer.push(e);
                if printer.len() >= WRITE_CHUNK {
                    printer.write_to(&mut out)?;
                }
            }
            printer.write_to(&mut out)?;
            out.flush()?;
            continue;
        }
        let response: Response =
            codec::decode(&frame).map_err(|e| CtlError::Protocol(e.to_string()))?;
        match response {
            Response::Entries(entries) => {
                shown += entries.len();
                // Only if the in-place reading above did not recognise it.
                let mut out = stdout.lock();
                for e in &entries {
                    printer.push(&EntryRef::from(e));
                }
                printer.write_to(&mut out)?;
                out.flush()?;
            }
            Response::Gap { from, resume_at } => {
                eprintln!(
                    "peerctl: messages {from}..{} are no longer in the inbox (trimmed by inbox_retention); \
                     continuing at {resume_at}",
                    resume_at.saturating_sub(1)
                );
            }
            Response::CaughtUp { .. } if shown == 0 && !said_empty => {
                said_empty = true;
                let what = match args.from {
                    _ if args.from_peer.is_some() && args.lines > 0 => format!(
                        "no messages from {} in the inbox",
                        args.from_peer.as_deref().unwrap_or_default()
                    ),
                    Some(seq) => format!("no messages from {seq} on"),
                    None if args.lines > 0 => "the inbox is empty".to_string(),
                    None => "none of the old messages shown (-n 0)".to_string(),
                };
                let more = if args.follow {
                    "; waiting for new ones (Ctrl-C stops)"
                } else {
                    ""
                };
                eprintln!("peerctl: {what}{more}");
                if !args.follow {
                    return Ok(());
                }
            }
            Response::CaughtUp { .. } if !args.follow => return Ok(()),
            Response::CaughtUp { .. } => {}
            Response::Error { kind, message } => return Err(CtlError::Daemon { kind, message }),
            other => return Err(CtlError::Protocol(format!("answered tail with {other:?}"))),
        }
    }
}

/// How [`Printer`] shows an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `TIME ORIGIN BODY`, the body escaped so one message is one line.
    Text,
    /// [`Format::Text`] with the time dimmed and the origin coloured.
    Styled,
    /// One JSON object per line (README "tail --json").
    Json,
}

const TIME: Style = Style::new().dimmed();
const PEER: Style = AnsiColor::Cyan.on_default().bold();
const CLIENT: Style = AnsiColor::Magenta.on_default().bold();

/// The style of an origin: peers and plain clients look different.
pub fn origin_style(origin: &str) -> Style {
    if origin.starts_with("client:") {
        CLIENT
    } else {
        PEER
    }
}

/// Formats entries into one reusable buffer, one line each.
pub struct Printer {
    format: Format,
    buf: Vec<u8>,
    clock: Clock,
    /// The escape sequences of the styles, rendered once:
    /// time on/off, peer on/off, client on/off.
    styles: [String; 6],
}

impl Printer {
    pub fn new(format: Format) -> Printer {
        Printer {
            format,
            buf: Vec::with_capacity(WRITE_CHUNK + 4096),
            clock: Clock::new(),
            styles: [
                format!("{TIME}"),
                format!("{TIME:#}"),
                format!("{PEER}"),
                format!("{PEER:#}"),
                format!("{CLIENT}"),
                format!("{CLIENT:#}"),
            ],
        }
    }

    /// Append one entry's line, newline included.
    pub fn push(&mut self, e: &EntryRef<'_>) {
        let time = self.clock.text(e.received_ms);
        let buf = &mut self.buf;
        match self.format {
            Format::Text => {
                buf.extend_from_slice(time.as_bytes());
                buf.push(b' ');
                buf.extend_from_slice(e.origin.as_bytes());
                buf.push(b' ');
                push_shown_body(buf, e.body);
            }
            Format::Styled => {
                let [t_on, t_off, p_on, p_off, c_on, c_off] = &self.styles;
                let (o_on, o_off) = if e.origin.starts_with("client:") {
                    (c_on, c_off)
                } else {
                    (p_on, p_off)
                };
                buf.extend_from_slice(t_on.as_bytes());
                buf.extend_from_slice(time.as_bytes());
                buf.extend_from_slice(t_off.as_bytes());
                buf.push(b' ');
                buf.extend_from_slice(o_on.as_bytes());
                buf.extend_from_slice(e.origin.as_bytes());
                buf.extend_from_slice(o_off.as_bytes());
                buf.push(b' ');
                push_shown_body(buf, e.body);
            }
            Format::Json => {
                // What `serde_json` writes for the struct below, field by
                // field (the tests hold the two to the same bytes).
                let mut n = itoa::Buffer::new();
                buf.extend_from_slice(b"{\"seq\":");
                buf.extend_from_slice(n.format(e.seq).as_bytes());
                buf.extend_from_slice(b",\"received\":\"");
                buf.extend_from_slice(time.as_bytes());
                buf.extend_from_slice(b"\",\"received_ms\":");
                buf.extend_from_slice(n.format(e.received_ms).as_bytes());
                buf.extend_from_slice(b",\"sent_ms\":");
                buf.extend_from_slice(n.format(e.sent_ms).as_bytes());
                buf.extend_from_slice(b",\"origin\":");
                push_json_str(buf, e.origin.as_bytes());
                buf.extend_from_slice(b",\"origin_seq\":");
                buf.extend_from_slice(n.format(e.origin_seq).as_bytes());
                buf.extend_from_slice(b",\"body\":");
                match std::str::from_utf8(e.body) {
                    Ok(_) => push_json_str(buf, e.body),
                    Err(_) => push_json_str(buf, String::from_utf8_lossy(e.body).as_bytes()),
                }
                buf.push(b'}');
            }
        }
        buf.push(b'\n');
    }

    /// Bytes formatted and not yet written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What is formatted so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Write what is formatted to `out` (one `write_all`) and start over.
    pub fn write_to<W: Write>(&mut self, out: &mut W) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// RFC 3339 UTC text of a time in ms, reused while the ms stays the same;
/// the date part is computed once per day.
struct Clock {
    /// The ms `text` shows (`u64::MAX`: none yet).
    ms: u64,
    /// The day (ms / 86 400 000) `text`'s date part is of.
    day: u64,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    text: String,
}

const MS_PER_DAY: u64 = 86_400_000;
/// The first ms of the year 10000, past which RFC 3339 has no text.
const MS_END: u64 = 253_402_300_800_000;

impl Clock {
    fn new() -> Clock {
        Clock {
            ms: u64::MAX,
            day: u64::MAX,
            text: String::with_capacity(32),
        }
    }

    fn text(&mut self, ms: u64) -> &str {
        if ms == self.ms {
            return &self.text;
        }
        self.ms = ms;
        if ms >= MS_END {
            // No daemon clock says this; show the number rather than fail.
            self.day = u64::MAX;
            self.text.clear();
            let _ = std::fmt::write(&mut self.text, format_args!("{ms}"));
            return &self.text;
        }
        let day = ms / MS_PER_DAY;
        if day != self.day {
            self.day = day;
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(day * MS_PER_DAY);
            self.text.clear();
            // In range (checked above), so the formatting cannot fail.
            let _ = std::fmt::write(
                &mut self.text,
                format_args!("{}", humantime::format_rfc3339_millis(t)),
            );
        }
        let of_day = ms % MS_PER_DAY;
        let (h, m, s, milli) = (
            of_day / 3_600_000,
            of_day / 60_000 % 60,
            of_day / 1000 % 60,
            of_day % 1000,
        );
        let digits = [
            h / 10,
            h % 10,
            m / 10,
            m % 10,
            s / 10,
            s % 10,
            milli / 100,
            milli / 10 % 10,
            milli % 10,
        ];
        let mut t = *b"00:00:00.000Z";
        for (pos, d) in [0, 1, 3, 4, 6, 7, 9, 10, 11].into_iter().zip(digits) {
            t[pos] = b'0' + d as u8;
        }
        // Keep `YYYY-MM-DDT`, replace the rest.
        self.text.truncate(11);
        self.text
            .push_str(std::str::from_utf8(&t).unwrap_or("00:00:00.000Z"));
        &self.text
    }
}

/// `TIME ORIGIN BODY`, with control characters in the body escaped so one
/// message is always one line.
pub fn text_line(e: &EntryRef<'_>) -> String {
    line(Format::Text, e)
}

/// [`text_line`] with the time dimmed and the origin coloured.
pub fn styled_line(e: &EntryRef<'_>) -> String {
    line(Format::Styled, e)
}

/// One JSON object, on one line.
pub fn json_line(e: &EntryRef<'_>) -> String {
    line(Format::Json, e)
}

fn line(format: Format, e: &EntryRef<'_>) -> String {
    let mut p = Printer::new(format);
    p.push(e);
    p.buf.pop();
    String::from_utf8_lossy(&p.buf).into_owned()
}

/// The body as one line of text: invalid UTF-8 replaced, newlines,
/// backslashes and control characters escaped (so no message can move the
/// cursor or fake another line).
pub fn shown_body(body: &[u8]) -> String {
    let mut out = Vec::with_capacity(body.len());
    push_shown_body(&mut out, body);
    // Only valid UTF-8 goes in (see `push_valid`).
    String::from_utf8_lossy(&out).into_owned()
}

/// Append [`shown_body`] of `body` to `out`: each maximal invalid UTF-8
/// sequence becomes U+FFFD (as `String::from_utf8_lossy` does), `\n`, `\r`
/// and `\\` are escaped as `\n`, `\r`, `\\`, and every other control
/// character but tab (U+0000–U+001F, U+007F–U+009F) as `\u{hex}`.
pub fn push_shown_body(out: &mut Vec<u8>, body: &[u8]) {
    if let Ok(s) = std::str::from_utf8(body) {
        push_valid(out, s.as_bytes());
        return;
    }
    for chunk in body.utf8_chunks() {
        push_valid(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
}

/// Bytes of valid UTF-8 that stand for themselves. Not: the ASCII controls
/// but tab, DEL, `\\`, and 0xC2 (the lead byte of U+0080–U+00BF, of which
/// U+0080–U+009F are controls).
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b >= 0x20 && b < 0x7f && b != b'\\' as usize)
            || b == b'\t' as usize
            || (b >= 0x80 && b != 0xc2);
        b += 1;
    }
    t
};

/// [`push_shown_body`] of text already known to be valid UTF-8: runs of
/// plain bytes are copied at once.
fn push_valid(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if PLAIN[b as usize] {
            i += 1;
            continue;
        }
        let (escape, len): (u32, usize) = match b {
            0xc2 => match s.get(i + 1) {
                Some(&c) if (0x80..0xa0).contains(&c) => (c as u32, 2),
                _ => {
                    i += 2;
                    continue;
                }
            },
            b => (b as u32, 1),
        };
        out.extend_from_slice(&s[start..i]);
        match escape {
            0x0a => out.extend_from_slice(b"\\n"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x5c => out.extend_from_slice(b"\\\\"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u{");
                if c >= 0x10 {
                    out.push(HEX[(c >> 4) as usize]);
                }
                out.push(HEX[(c & 0xf) as usize]);
                out.push(b'}');
            }
        }
        i += len;
        start = i;
    }
    out.extend_from_slice(&s[start..]);
}

/// Bytes of UTF-8 text that a JSON string holds as they are (as
/// `serde_json` writes it): all but `"`, `\\` and U+0000–U+001F.
const JSON_PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = false;
        b += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

/// `s` (valid UTF-8) as a JSON string, escaped exactly as `serde_json`
/// escapes it: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other controls as
/// `\u00xx`. `tail --json` (README) shows one object per line, fields in
/// the order `Printer::push` writes them; invalid UTF-8 in a body is
/// replaced by U+FFFD before this.
fn push_json_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if JSON_PLAIN[b as usize] {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests;
