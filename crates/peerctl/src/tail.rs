//! `peerctl tail`: print inbox entries, one per line, flushed as they come
//! (stdout is line-buffered). Colour only when stdout is a terminal and
//! `NO_COLOR` is not set; `--json` is never coloured.

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};

use peerlink::control::{Entry, Request, Response, TailStart};

use crate::cli::TailArgs;
use crate::client::{Client, Target};
use crate::error::CtlError;

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
        })
        .await?;
    let stdout = std::io::stdout();
    let colour = !args.json && crate::colour(&stdout);
    // On a terminal, an empty answer is said out loud (never in a pipe).
    let mut shown = 0usize;
    let mut said_empty = !stdout.is_terminal();
    loop {
        match client.recv().await? {
            Response::Entries(entries) => {
                shown += entries.len();
                let mut out = stdout.lock();
                for e in &entries {
                    let line = if args.json {
                        json_line(e)
                    } else if colour {
                        styled_line(e)
                    } else {
                        text_line(e)
                    };
                    writeln!(out, "{line}")?;
                }
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

fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `TIME ORIGIN BODY`, with control characters in the body escaped so one
/// message is always one line.
pub fn text_line(e: &Entry) -> String {
    format!(
        "{} {} {}",
        time(e.received_ms),
        e.origin,
        shown_body(&e.body)
    )
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

/// [`text_line`] with the time dimmed and the origin coloured.
pub fn styled_line(e: &Entry) -> String {
    let o = origin_style(&e.origin);
    format!(
        "{TIME}{}{TIME:#} {o}{}{o:#} {}",
        time(e.received_ms),
        e.origin,
        shown_body(&e.body)
    )
}

/// The body as one line of text: invalid UTF-8 replaced, newlines,
/// backslashes and control characters escaped (so no message can move the
/// cursor or fake another line).
pub fn shown_body(body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    let mut shown = String::with_capacity(body.len());
    for c in body.chars() {
        match c {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\\' => shown.push_str("\\\\"),
            c if c.is_control() && c != '\t' => shown.push_str(&c.escape_unicode().to_string()),
            c => shown.push(c),
        }
    }
    shown
}

/// `tail --json`: one object per line, fields in this order (README
/// "tail --json").
#[derive(serde::Serialize)]
struct EntryJson<'a> {
    seq: u64,
    received: String,
    received_ms: u64,
    sent_ms: u64,
    origin: &'a str,
    origin_seq: u64,
    /// The body as a string (invalid UTF-8 replaced by U+FFFD).
    body: std::borrow::Cow<'a, str>,
}

/// One JSON object, on one line.
pub fn json_line(e: &Entry) -> String {
    let v = EntryJson {
        seq: e.seq,
        received: time(e.received_ms),
        received_ms: e.received_ms,
        sent_ms: e.sent_ms,
        origin: &e.origin,
        origin_seq: e.origin_seq,
        body: String::from_utf8_lossy(&e.body),
    };
    // A struct of strings and numbers always serializes.
    serde_json::to_string(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_one_line() {
        let e = Entry {
            seq: 1,
            received_ms: 0,
            sent_ms: 0,
            origin: "b".into(),
            origin_seq: 1,
            body: b"two\nlines\\".to_vec(),
        };
        assert_eq!(text_line(&e), "1970-01-01T00:00:00.000Z b two\\nlines\\\\");
        assert!(json_line(&e).starts_with("{\"seq\":1,\"received\":\"1970-01-01T00:00:00.000Z\""));
        let v: serde_json::Value = serde_json::from_str(&json_line(&e)).unwrap();
        assert_eq!(v["body"], "two\nlines\\");
        assert_eq!(v["origin"], "b");
        assert_eq!(
            anstream::adapter::strip_str(&styled_line(&e)).to_string(),
            text_line(&e)
        );
        assert_eq!(shown_body(b"\x1b[2J"), "\\u{1b}[2J");
    }
}
