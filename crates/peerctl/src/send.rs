//! `peerctl send`: messages from arguments or stdin lines (or NUL-separated
//! records with `--null`), streamed to the daemon in batches without
//! waiting for each reply (the daemon answers in order), so `seq 1 1000000
//! | peerctl send` is one pipelined stream. A long stream from a pipe shows
//! its progress on stderr when that is a terminal.
//!
//! Empty messages are never stored (README "send and tail"): an empty
//! argument is a usage error and nothing is sent, while on stdin a blank
//! line (or empty `--null` record) is no message and is skipped. A message
//! over the daemon's `max_message` is refused here, naming the limit: an
//! argument before anything is sent, a stdin line as soon as it grows past
//! the limit (so a huge line is never held whole), after the lines before
//! it were sent.

use std::collections::VecDeque;
use std::io::IsTerminal;

use peerlink::control::{ErrorKind, Request, Response, SEND_BATCH_BYTES};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::cli::SendArgs;
use crate::client::{Client, Target};
use crate::error::CtlError;
use crate::progress::Progress;

/// Batches sent but not yet answered, at most.
const MAX_OUTSTANDING: usize = 32;
/// Messages in one batch, at most.
const BATCH_MESSAGES: usize = 65_536;

pub async fn run(target: &Target, args: SendArgs) -> Result<(), CtlError> {
    let client = Client::connect(target).await?;
    let max_message = client.max_message;
    let from_stdin =
        args.messages.is_empty() || (args.messages.len() == 1 && args.messages[0] == "-");
    if !from_stdin && args.messages.iter().any(|m| m == "-") {
        return Err(CtlError::Usage(
            "`-` (stdin) cannot be mixed with message arguments".into(),
        ));
    }
    if args.null && !from_stdin {
        return Err(CtlError::Usage(
            "--null reads messages from stdin; it takes no message arguments".into(),
        ));
    }
    if !from_stdin {
        for (i, m) in args.messages.iter().enumerate() {
            let what = if args.messages.len() > 1 {
                format!("message {} (argument {})", i + 1, i + 1)
            } else {
                "message".to_string()
            };
            match client.refusal(&what, m.len()) {
                Some(why) if m.is_empty() => {
                    return Err(CtlError::Usage(format!("{why}; nothing was sent")));
                }
                Some(why) => {
                    return Err(CtlError::Daemon {
                        kind: ErrorKind::Rejected,
                        message: format!("{why}; nothing was sent"),
                    });
                }
                None => {}
            }
        }
    }
    let split = if args.null { Split::Nul } else { Split::Lines };
    let instance = client.daemon_instance.clone();
    // Progress for a stream from a pipe or file, never for a person typing.
    let progress = Progress::new(
        from_stdin && !std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
    );
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>(4);
    let producer = async move {
        if from_stdin {
            read_stdin(tx, split, max_message)
                .await
                .map_err(|e| e.explained(&instance))
        } else {
            for batch in batches(args.messages.into_iter().map(os_bytes)) {
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
    };
    let wait = args.wait;
    let to = args.to;
    // Ends when the stream does: an error or Ctrl-C must not wait for a
    // read of stdin that may never end.
    let work = async {
        let sent = stream(client, rx, wait, to, progress);
        tokio::pin!(producer, sent);
        let mut read = None;
        loop {
            tokio::select! {
                r = &mut producer, if read.is_none() => read = Some(r),
                s = &mut sent => {
                    s?;
                    return match read {
                        Some(r) => r,
                        None => (&mut producer).await,
                    };
                }
            }
        }
    };
    match args.timeout.filter(|_| wait) {
        Some(t) => tokio::time::timeout(t, work).await.unwrap_or_else(|_| {
            Err(CtlError::NotDelivered(format!(
                "not delivered within {}: the messages are queued and will be delivered when the link is up \
                 (see `peerctl status`)",
                humantime::format_duration(t)
            )))
        }),
        None => work.await,
    }
}

/// Send every batch from `rx`, pipelined; collect the replies.
async fn stream(
    client: Client,
    rx: mpsc::Receiver<Vec<Vec<u8>>>,
    wait: bool,
    to: Vec<String>,
    mut progress: Progress,
) -> Result<(), CtlError> {
    // Ctrl-C: stop, clear the progress line and say how far it got.
    let r = tokio::select! {
        r = pipeline(client, rx, wait, &to, &mut progress) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    progress.finish();
    r.unwrap_or_else(|| Err(CtlError::Interrupted(progress.summary(wait))))
}

async fn pipeline(
    mut client: Client,
    mut rx: mpsc::Receiver<Vec<Vec<u8>>>,
    wait: bool,
    to: &[String],
    progress: &mut Progress,
) -> Result<(), CtlError> {
    // (messages, bytes, stored) of each batch sent and not yet answered
    // (with --wait: not yet delivered; `stored` once its `Sent` came).
    let mut outstanding: VecDeque<(u64, u64, bool)> = VecDeque::new();
    let mut input_done = false;
    loop {
        if input_done && outstanding.is_empty() {
            return Ok(());
        }
        tokio::select! {
            batch = rx.recv(), if !input_done && outstanding.len() < MAX_OUTSTANDING => match batch {
                Some(bodies) => {
                    let bytes = bodies.iter().map(|b| b.len() as u64).sum();
                    let n = bodies.len() as u64;
                    client.send(&Request::Send { bodies, wait, to: to.to_vec() }).await?;
                    progress.sent(n);
                    outstanding.push_back((n, bytes, false));
                }
                None => input_done = true,
            },
            reply = client.recv(), if !outstanding.is_empty() => match reply.map_err(|e| went_away(e, &outstanding))? {
                Response::Sent { .. } if wait => {
                    if let Some(b) = outstanding.iter_mut().find(|b| !b.2) {
                        b.2 = true;
                        progress.stored(b.0, b.1);
                    }
                }
                Response::Sent { .. } => {
                    if let Some((n, bytes, _)) = outstanding.pop_front() {
                        progress.stored(n, bytes);
                    }
                }
                Response::Delivered { .. } => {
                    outstanding.pop_front();
                }
                Response::Error { kind: ErrorKind::OutboxFull, message } => {
                    return Err(CtlError::Daemon { kind: ErrorKind::OutboxFull, message: format!("{message} (earlier messages were queued and will be delivered)") });
                }
                Response::Error { kind, message } => return Err(CtlError::Daemon { kind, message }),
                other => return Err(CtlError::Protocol(format!("answered a send with {other:?}"))),
            },
        }
    }
}

/// The bytes of an argument, as given (invalid UTF-8 included, as from
/// stdin; off Unix, where arguments are UTF-16, lossily).
fn os_bytes(arg: std::ffi::OsString) -> Vec<u8> {
    #[cfg(unix)]
    {
        std::os::unix::ffi::OsStringExt::into_vec(arg)
    }
    #[cfg(not(unix))]
    {
        arg.to_string_lossy().into_owned().into_bytes()
    }
}

/// The daemon went away (or the connection broke) with batches in
/// flight: say which of them are stored (they will be delivered when it
/// runs again: sending them again would duplicate them) and which may not
/// be, so a retry does not duplicate blindly.
fn went_away(e: CtlError, outstanding: &VecDeque<(u64, u64, bool)>) -> CtlError {
    let stored: u64 = outstanding.iter().filter(|b| b.2).map(|b| b.0).sum();
    let unknown: u64 = outstanding.iter().filter(|b| !b.2).map(|b| b.0).sum();
    let mut parts = Vec::new();
    if stored > 0 {
        parts.push(format!(
            "{stored} message{} were stored and will be delivered when peerd runs again \
             (do not send them again)",
            if stored == 1 { "" } else { "s" }
        ));
    }
    if unknown > 0 {
        parts.push(format!(
            "{unknown} message{} may or may not have been stored (compare with `peerctl tail` on \
             the peer before sending them again)",
            if unknown == 1 { "" } else { "s" }
        ));
    }
    CtlError::NotDelivered(format!("{e}: {}", parts.join("; ")))
}

/// Group messages into batches under the control frame limit.
fn batches(messages: impl IntoIterator<Item = Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for m in messages {
        if !cur.is_empty() && (bytes + m.len() > SEND_BATCH_BYTES || cur.len() >= BATCH_MESSAGES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += m.len() + 8;
        cur.push(m);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// How stdin is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One message per line (`\n`, a `\r` before it is dropped).
    Lines,
    /// One message per NUL-terminated record (`--null`), taken as is.
    Nul,
}

/// Why reading messages from stdin stopped early.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// Message number `n` (1-based, blank ones counted) grew past
    /// `max_message`: it had `len` bytes, or more if not `complete`.
    TooBig {
        n: u64,
        len: usize,
        complete: bool,
        max_message: u64,
        split: Split,
    },
}

impl ReadError {
    /// As `peerctl` reports it, naming the daemon's limit.
    pub fn explained(self, instance: &str) -> CtlError {
        match self {
            ReadError::Io(e) => CtlError::Io(e),
            ReadError::TooBig {
                n,
                len,
                complete,
                max_message,
                split,
            } => {
                let more = if complete { "" } else { "more than " };
                let what = match split {
                    Split::Lines => "line",
                    Split::Nul => "record",
                };
                CtlError::Daemon {
                    kind: ErrorKind::Rejected,
                    message: format!(
                        "{what} {n} of stdin, of {more}{len} bytes, is larger than max_message ({}) of instance {instance}; \
                         the {what}s before it were sent, nothing after it",
                        crate::client::size_setting(max_message)
                    ),
                }
            }
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Read stdin and emit the complete messages of each read as one batch: a
/// pipe full of lines becomes large batches, a person typing gets each line
/// sent at once. A last message without a terminator is a message too;
/// empty ones are skipped, and one longer than `max_message` stops the
/// read with [`ReadError::TooBig`] as soon as it is.
pub async fn read_stdin(
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    split: Split,
    max_message: u64,
) -> Result<(), ReadError> {
    read_messages(tokio::io::stdin(), tx, split, max_message).await
}

/// [`read_stdin`] from any reader.
pub async fn read_messages(
    mut stdin: impl tokio::io::AsyncRead + Unpin,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    split: Split,
    max_message: u64,
) -> Result<(), ReadError> {
    let sep = match split {
        Split::Lines => b'\n',
        Split::Nul => 0,
    };
    // A line may end in a `\r` that is not part of it: allow for one.
    let max_held = usize::try_from(max_message)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let too_big = |n: u64, len: usize, complete: bool| ReadError::TooBig {
        n,
        len,
        complete,
        max_message,
        split,
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    // Messages seen so far, blank ones included (for error messages).
    let mut seen = 0u64;
    loop {
        let n = stdin.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(at) = buf[start..n].iter().position(|&c| c == sep) {
            let i = start + at;
            seen += 1;
            let mut line = std::mem::take(&mut partial);
            line.extend_from_slice(&buf[start..i]);
            start = i + 1;
            if split == Split::Lines && line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() as u64 > max_message {
                flush(&tx, lines).await;
                return Err(too_big(seen, line.len(), true));
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
        partial.extend_from_slice(&buf[start..n]);
        if partial.len() > max_held {
            flush(&tx, lines).await;
            return Err(too_big(seen + 1, partial.len(), false));
        }
        if !flush(&tx, lines).await {
            return Ok(());
        }
    }
    if partial.len() as u64 > max_message {
        return Err(too_big(seen + 1, partial.len(), true));
    }
    if !partial.is_empty() {
        let _ = tx.send(vec![partial]).await;
    }
    Ok(())
}

/// Send `lines` in batches; false once nobody takes them.
async fn flush(tx: &mpsc::Sender<Vec<Vec<u8>>>, lines: Vec<Vec<u8>>) -> bool {
    for batch in batches(lines) {
        if tx.send(batch).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_limits() {
        let msgs = vec![vec![0u8; SEND_BATCH_BYTES / 2]; 5];
        let b = batches(msgs);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1, 1, 1]);
        let b = batches(vec![vec![1u8]; BATCH_MESSAGES + 1]);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            [BATCH_MESSAGES, 1]
        );
        assert!(batches(Vec::new()).is_empty());
    }

    async fn cut_max(
        input: &[u8],
        split: Split,
        max: u64,
    ) -> (Vec<Vec<u8>>, Result<(), ReadError>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let r = read_messages(input, tx, split, max).await;
        let mut all = Vec::new();
        while let Some(b) = rx.recv().await {
            all.extend(b);
        }
        (all, r)
    }

    async fn cut(input: &'static [u8], split: Split) -> Vec<Vec<u8>> {
        let (all, r) = cut_max(input, split, 1 << 20).await;
        r.unwrap();
        all
    }

    #[tokio::test]
    async fn stdin_is_cut_into_lines_or_nul_records_and_blank_ones_skipped() {
        assert_eq!(
            cut(b"a\r\nb\n\n\r\nc", Split::Lines).await,
            [&b"a"[..], b"b", b"c"]
        );
        assert_eq!(
            cut(b"one\ntwo\0\0three\r\n\0", Split::Nul).await,
            [&b"one\ntwo"[..], b"three\r\n"]
        );
        assert_eq!(cut(b" \n\n", Split::Lines).await, [&b" "[..]]);
        assert!(cut(b"\n\n\n", Split::Lines).await.is_empty());
    }

    #[tokio::test]
    async fn a_line_over_max_message_stops_the_read_after_the_lines_before_it() {
        let (sent, r) = cut_max(b"ok\n\n12345\nlater\n", Split::Lines, 4).await;
        assert_eq!(sent, [b"ok".to_vec()]);
        assert!(
            matches!(
                r,
                Err(ReadError::TooBig {
                    n: 3,
                    len: 5,
                    max_message: 4,
                    ..
                })
            ),
            "{r:?}"
        );
        // Exactly max_message, with a `\r` that is not part of it: fine.
        let (sent, r) = cut_max(b"1234\r\n1234", Split::Lines, 4).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(sent, [b"1234".to_vec(), b"1234".to_vec()]);
        // A line with no end in sight is refused once it outgrows the
        // limit, without holding all of it.
        let huge = vec![b'x'; 3 << 20];
        let (sent, r) = cut_max(&huge, Split::Lines, 1 << 20).await;
        assert!(sent.is_empty());
        match r {
            Err(ReadError::TooBig { n: 1, len, .. }) => assert!(len < 2 << 20, "{len}"),
            other => panic!("{other:?}"),
        }
        let e = cut_max(b"a\0bbbbb\0", Split::Nul, 4)
            .await
            .1
            .unwrap_err()
            .explained("a")
            .to_string();
        assert_eq!(
            e,
            "peerd refused: record 2 of stdin, of 5 bytes, is larger than max_message (4B) of instance a; \
             the records before it were sent, nothing after it"
        );
    }
}
