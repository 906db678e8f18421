//! `peerctl status`: the daemon and each link, for people or as JSON.

use std::io::Write;
use std::time::Duration;

use peerlink::control::{LinkState, Request, Response, Status};

use crate::cli::StatusArgs;
use crate::client::{Client, Target};
use crate::error::{CtlError, EXIT_DOWN, EXIT_OK};

/// Print the status; the exit code says whether every link is up.
pub async fn run(target: &Target, args: StatusArgs) -> Result<u8, CtlError> {
    let mut client = Client::connect(target).await?;
    client.send(&Request::Status).await?;
    let status = match client.recv().await? {
        Response::Status(s) => s,
        Response::Error { kind, message } => return Err(CtlError::Daemon { kind, message }),
        other => {
            return Err(CtlError::Protocol(format!(
                "answered status with {other:?}"
            )));
        }
    };
    let text = if args.json {
        serde_json::to_string_pretty(&status).map_err(|e| CtlError::Protocol(e.to_string()))?
    } else {
        render(&status)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    let all_up = status.peers.iter().all(|p| p.state == LinkState::Connected);
    Ok(if all_up { EXIT_OK } else { EXIT_DOWN })
}

fn ago(now: u64, then: u64) -> String {
    let d = Duration::from_secs(now.saturating_sub(then) / 1000);
    format!("{} ago", humantime::format_duration(d))
}

fn size(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// The human view: aligned `key value` lines, one block per peer.
pub fn render(s: &Status) -> String {
    let now = s.now_ms;
    let up = Duration::from_secs(now.saturating_sub(s.started_ms) / 1000);
    let mut out = Vec::new();
    out.push(format!(
        "peerd {} (node {}, peerlink {}), pid {}, up {}",
        s.instance,
        s.node,
        s.version,
        s.pid,
        humantime::format_duration(up)
    ));
    out.push(format!("  {:<11}{}", "listening", s.listen));
    out.push(format!("  {:<11}{}", "control", s.socket));
    let store = if s.journal.durable {
        format!("durable in {}", s.state_dir)
    } else {
        "in memory".to_string()
    };
    out.push(format!(
        "  {:<11}{store}, epoch {:016x}, inbox {}..{}, outbox next {}",
        "journal",
        s.journal.epoch,
        s.journal.inbox_first,
        s.journal.inbox_next.saturating_sub(1),
        s.journal.outbox_next
    ));
    for p in &s.peers {
        out.push(String::new());
        let state = match p.state {
            LinkState::Connected => "connected".to_string(),
            LinkState::Connecting => "connecting".to_string(),
            LinkState::Backoff => match p.next_attempt_ms {
                Some(t) if t > now => format!(
                    "backoff, next attempt in {}",
                    humantime::format_duration(Duration::from_millis(t - now))
                ),
                _ => "backoff".to_string(),
            },
        };
        out.push(format!("peer {}: {state}", p.name));
        out.push(format!("  {:<11}{}", "url", p.url));
        if let (Some(dir), Some(addr)) = (p.direction, &p.remote_addr) {
            let dir = match dir {
                peerlink::control::Direction::Outbound => "outbound to",
                peerlink::control::Direction::Inbound => "inbound from",
            };
            out.push(format!("  {:<11}{dir} {addr}", "session"));
        }
        if let Some(t) = p.connected_since_ms {
            out.push(format!("  {:<11}{}", "since", ago(now, t)));
        }
        if let Some(t) = p.last_handshake_ms {
            out.push(format!("  {:<11}{}", "handshake", ago(now, t)));
        }
        if let Some(rtt) = p.rtt_us {
            out.push(format!("  {:<11}{:.2} ms", "rtt", rtt as f64 / 1000.0));
        }
        out.push(format!(
            "  {:<11}{} msgs, {}",
            "sent",
            p.msgs_sent,
            size(p.bytes_sent)
        ));
        out.push(format!(
            "  {:<11}{} msgs, {}",
            "received",
            p.msgs_received,
            size(p.bytes_received)
        ));
        let oldest = p
            .oldest_queued_ms
            .map(|t| format!(", oldest {}", ago(now, t)))
            .unwrap_or_default();
        out.push(format!(
            "  {:<11}{} msgs, {}{oldest}",
            "queued",
            p.queued_msgs,
            size(p.queued_bytes)
        ));
        out.push(format!("  {:<11}{}", "reconnects", p.reconnects));
        if let Some(e) = &p.last_error {
            let when = p
                .last_error_ms
                .map(|t| format!(" ({})", ago(now, t)))
                .unwrap_or_default();
            out.push(format!("  {:<11}{e}{when}", "last error"));
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 20), "3.0 MiB");
    }
}
