//! `peerctl send`: messages from arguments or stdin lines, streamed to the
//! daemon in batches without waiting for each reply (the daemon answers in
//! order), so `seq 1 1000000 | peerctl send` is one pipelined stream.

use peerlink::control::{ErrorKind, Request, Response, SEND_BATCH_BYTES};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::cli::SendArgs;
use crate::client::{Client, Target};
use crate::error::CtlError;

/// Batches sent but not yet answered, at most.
const MAX_OUTSTANDING: usize = 32;
/// Messages in one batch, at most.
const BATCH_MESSAGES: usize = 65_536;

pub async fn run(target: &Target, args: SendArgs) -> Result<(), CtlError> {
    let client = Client::connect(target).await?;
    let from_stdin = args.messages.is_empty() || args.messages == ["-"];
    if !from_stdin && args.messages.iter().any(|m| m == "-") {
        return Err(CtlError::Usage(
            "`-` (stdin) cannot be mixed with message arguments".into(),
        ));
    }
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>(4);
    let producer = async move {
        if from_stdin {
            read_lines(tx).await
        } else {
            for batch in batches(args.messages.into_iter().map(String::into_bytes)) {
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
    };
    let wait = args.wait;
    let work = async {
        let (read, sent) = tokio::join!(producer, stream(client, rx, wait));
        read?;
        sent
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
    mut client: Client,
    mut rx: mpsc::Receiver<Vec<Vec<u8>>>,
    wait: bool,
) -> Result<(), CtlError> {
    let mut outstanding = 0usize;
    let mut input_done = false;
    loop {
        if input_done && outstanding == 0 {
            return Ok(());
        }
        tokio::select! {
            batch = rx.recv(), if !input_done && outstanding < MAX_OUTSTANDING => match batch {
                Some(bodies) => {
                    client.send(&Request::Send { bodies, wait }).await?;
                    outstanding += 1;
                }
                None => input_done = true,
            },
            reply = client.recv(), if outstanding > 0 => match reply? {
                Response::Sent { .. } if wait => {}
                Response::Sent { .. } | Response::Delivered { .. } => outstanding -= 1,
                Response::Error { kind: ErrorKind::OutboxFull, message } => {
                    return Err(CtlError::Daemon { kind: ErrorKind::OutboxFull, message: format!("{message} (earlier messages were queued and will be delivered)") });
                }
                Response::Error { kind, message } => return Err(CtlError::Daemon { kind, message }),
                other => return Err(CtlError::Protocol(format!("answered a send with {other:?}"))),
            },
        }
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

/// Read stdin and emit the complete lines of each read as one batch: a
/// pipe full of lines becomes large batches, a person typing gets each line
/// sent at once. A last line without a newline is a message too.
async fn read_lines(tx: mpsc::Sender<Vec<Vec<u8>>>) -> Result<(), CtlError> {
    let mut stdin = tokio::io::stdin();
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
            if c == b'\n' {
                let mut line = std::mem::take(&mut partial);
                line.extend_from_slice(&buf[start..i]);
                if line.last() == Some(&b'\r') {
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
}
