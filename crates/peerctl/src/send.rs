//! `peerctl send`: messages from arguments or stdin lines (or NUL-separated
//! records with `--null`), streamed to the daemon in batches without
//! waiting for each reply (the daemon answers in order), so `seq 1 1000000
//! | peerctl send` is one pipelined stream. A long stream from a pipe shows
//! its progress on stderr when that is a terminal.

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
    let split = if args.null { Split::Nul } else { Split::Lines };
    // Progress for a stream from a pipe or file, never for a person typing.
    let progress = Progress::new(
        from_stdin && !std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
    );
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>(4);
    let producer = async move {
        if from_stdin {
            read_stdin(tx, split).await
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
    // Ends when the stream does: an error or Ctrl-C must not wait for a
    // read of stdin that may never end.
    let work = async {
        let sent = stream(client, rx, wait, progress);
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
    mut progress: Progress,
) -> Result<(), CtlError> {
    // Ctrl-C: stop, clear the progress line and say how far it got.
    let r = tokio::select! {
        r = pipeline(client, rx, wait, &mut progress) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    progress.finish();
    r.unwrap_or_else(|| Err(CtlError::Interrupted(progress.summary(wait))))
}

async fn pipeline(
    mut client: Client,
    mut rx: mpsc::Receiver<Vec<Vec<u8>>>,
    wait: bool,
    progress: &mut Progress,
) -> Result<(), CtlError> {
    // (messages, bytes) of each batch sent and not yet answered.
    let mut outstanding: VecDeque<(u64, u64)> = VecDeque::new();
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
                    client.send(&Request::Send { bodies, wait }).await?;
                    progress.sent(n);
                    outstanding.push_back((n, bytes));
                }
                None => input_done = true,
            },
            reply = client.recv(), if !outstanding.is_empty() => match reply? {
                Response::Sent { .. } if wait => {
                    if let Some((n, bytes)) = outstanding.front() {
                        progress.stored(*n, *bytes);
                    }
                }
                Response::Sent { .. } => {
                    if let Some((n, bytes)) = outstanding.pop_front() {
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

/// Read stdin and emit the complete messages of each read as one batch: a
/// pipe full of lines becomes large batches, a person typing gets each line
/// sent at once. A last message without a terminator is a message too.
pub async fn read_stdin(tx: mpsc::Sender<Vec<Vec<u8>>>, split: Split) -> Result<(), CtlError> {
    read_messages(tokio::io::stdin(), tx, split).await
}

/// [`read_stdin`] from any reader.
pub async fn read_messages(
    mut stdin: impl tokio::io::AsyncRead + Unpin,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    split: Split,
) -> Result<(), CtlError> {
    let sep = match split {
        Split::Lines => b'\n',
        Split::Nul => 0,
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = stdin.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, &c) in buf[..n].iter().enumerate() {
            if c == sep {
                let mut line = std::mem::take(&mut partial);
                line.extend_from_slice(&buf[start..i]);
                if split == Split::Lines && line.last() == Some(&b'\r') {
                    line.pop();
                }
                lines.push(line);
                start = i + 1;
            }
        }
        partial.extend_from_slice(&buf[start..n]);
        for batch in batches(lines) {
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
        }
    }
    if !partial.is_empty() {
        let _ = tx.send(vec![partial]).await;
    }
    Ok(())
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

    async fn cut(input: &'static [u8], split: Split) -> Vec<Vec<u8>> {
        let (tx, mut rx) = mpsc::channel(16);
        read_messages(input, tx, split).await.unwrap();
        let mut all = Vec::new();
        while let Some(b) = rx.recv().await {
            all.extend(b);
        }
        all
    }

    #[tokio::test]
    async fn stdin_is_cut_into_lines_or_nul_records() {
        assert_eq!(
            cut(b"a\r\nb\n\nc", Split::Lines).await,
            [&b"a"[..], b"b", b"", b"c"]
        );
        assert_eq!(
            cut(b"one\ntwo\0three\r\n\0", Split::Nul).await,
            [&b"one\ntwo"[..], b"three\r\n"]
        );
    }
}
