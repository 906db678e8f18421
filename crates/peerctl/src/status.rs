//! `peerctl status`: the daemon and each link, for people (aligned `key:
//! value` blocks in the spirit of `wg show`, colour only on a terminal and
//! never with `NO_COLOR`) or as JSON for scripts.
//!
//! The JSON is its own view ([`StatusJson`]), not the control protocol's
//! types: the wire types can change with the protocol version while the
//! JSON schema stays what the README documents. Enums are lowercase strings
//! (`"connected"`, `"outbound"`), times are milliseconds since the Unix
//! epoch, absent values are `null`. Fields may be added; none is renamed or
//! removed without bumping `schema`.

use std::io::Write;
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use std::collections::BTreeMap;

use peerlink::control::{
    Direction, Histogram, LinkState, PeerStatus, ReloadReport, Request, Response, Status,
};
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::client::{Client, Target};
use crate::error::{CtlError, EXIT_DOWN, EXIT_LOST, EXIT_OK};

/// Bumped when a field of the JSON is renamed, removed or changes meaning.
pub const JSON_SCHEMA: u32 = 1;

/// Print the status; the exit code says whether every link is up.
pub async fn run(target: &Target, args: &StatusArgs) -> Result<u8, CtlError> {
    let status = fetch(target).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&StatusJson::from(&*status))
            .map_err(|e| CtlError::Protocol(e.to_string()))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
    } else {
        let mut out = anstream::stdout().lock();
        writeln!(out, "{}", render(&status))?;
        out.flush()?;
    }
    Ok(exit_code(&status))
}

/// `status` with no instance named and several running: each of them, in
/// name order (a blank line between; `--json`: one array). One that
/// cannot be reached is reported on stderr and the others still shown;
/// the exit status is the highest of theirs.
pub async fn run_several(all: &[Target], args: &StatusArgs) -> Result<u8, CtlError> {
    let mut code = EXIT_OK;
    let mut json = Vec::new();
    let mut first = true;
    for target in all {
        let status = match fetch(target).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("peerctl: {e}");
                code = code.max(e.exit_code());
                continue;
            }
        };
        code = code.max(exit_code(&status));
        if args.json {
            json.push(StatusJson::from(&*status));
            continue;
        }
        let mut out = anstream::stdout().lock();
        if !first {
            writeln!(out)?;
        }
        first = false;
        writeln!(out, "{}", render(&status))?;
        out.flush()?;
    }
    if args.json {
        let text =
            serde_json::to_string_pretty(&json).map_err(|e| CtlError::Protocol(e.to_string()))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(code)
}

/// Ask one daemon for its status.
async fn fetch(target: &Target) -> Result<Box<Status>, CtlError> {
    let mut client = Client::connect(target).await?;
    client.send(&Request::Status).await?;
    match client.recv().await? {
        Response::Status(s) => Ok(s),
        Response::Error { kind, message } => Err(CtlError::Daemon { kind, message }),
        other => Err(CtlError::Protocol(format!(
            "answered status with {other:?}"
        ))),
    }
}

/// 0 when every link is up; [`EXIT_LOST`] when messages were lost since
/// the daemon started (whatever the links do: that is the louder news);
/// else [`EXIT_DOWN`].
pub fn exit_code(s: &Status) -> u8 {
    if s.peers.iter().any(|p| p.msgs_lost_since_start > 0) {
        EXIT_LOST
    } else if all_up(s) {
        EXIT_OK
    } else {
        EXIT_DOWN
    }
}

fn all_up(s: &Status) -> bool {
    s.peers.iter().all(|p| p.state == LinkState::Connected)
}

/// `status --json`: the documented schema (README "status --json").
#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub schema: u32,
    pub instance: String,
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub started_ms: u64,
    pub now_ms: u64,
    pub uptime_ms: u64,
    pub listen: String,
    pub socket: String,
    pub state_dir: String,
    /// Every peer link is connected (what exit status 0 means).
    pub all_up: bool,
    /// The HTTP listener of /metrics and the console, or null (off).
    pub http_listen: Option<String>,
    /// Peer handshakes refused for a wrong or missing proof, since start.
    pub auth_failures: u64,
    /// Sends refused since start, by reason (only reasons that happened).
    pub refused_sends: BTreeMap<String, u64>,
    pub journal: JournalJson,
    pub peers: Vec<PeerJson>,
    /// What the last reload since start did, or null.
    pub last_reload: Option<ReloadReport>,
}

#[derive(Debug, Serialize)]
pub struct JournalJson {
    pub durable: bool,
    /// 16 hex digits: a u64 does not fit a JSON number exactly everywhere.
    pub epoch: String,
    pub outbox_next: u64,
    pub inbox_first: u64,
    pub inbox_next: u64,
    /// Why the last journal write failed (disk full, I/O error), while it
    /// keeps failing; `null` when writes work.
    pub storage_error: Option<String>,
    pub storage_error_ms: Option<u64>,
    /// Journal writes that failed since start.
    pub storage_errors: u64,
    pub outbox_msgs: u64,
    pub outbox_bytes: u64,
    pub inbox_msgs: u64,
    pub inbox_bytes: u64,
    /// Write+fsync time per batch (µs) and records per batch, since start.
    pub commit_us: Histogram,
    pub batch_records: Histogram,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateJson {
    Connected,
    Connecting,
    Backoff,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectionJson {
    Outbound,
    Inbound,
}

#[derive(Debug, Serialize)]
pub struct PeerJson {
    pub name: String,
    pub url: String,
    pub state: StateJson,
    pub direction: Option<DirectionJson>,
    pub remote_addr: Option<String>,
    pub local_addr: Option<String>,
    pub connected_since_ms: Option<u64>,
    pub last_handshake_ms: Option<u64>,
    pub rtt_us: Option<u64>,
    pub next_attempt_ms: Option<u64>,
    pub msgs_sent: u64,
    pub bytes_sent: u64,
    pub msgs_received: u64,
    pub bytes_received: u64,
    pub queued_msgs: u64,
    pub queued_bytes: u64,
    pub oldest_queued_ms: Option<u64>,
    pub reconnects: u64,
    /// `reconnects` by why the session before ended.
    pub reconnect_reasons: BTreeMap<String, u64>,
    /// Our messages (and their bytes as stored) the peer acknowledged.
    pub msgs_acked: u64,
    pub bytes_acked: u64,
    /// Messages known lost between us and this peer, either way (kept in
    /// the journal), and since this daemon started (exit status 5).
    pub msgs_lost: u64,
    pub msgs_lost_since_start: u64,
    /// The peer's max_message (from its last handshake), or null.
    pub peer_max_message: Option<u64>,
    /// Why the queue to this peer is held, and how to unblock it, or null.
    pub held: Option<String>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// The id of the secret the live session uses, and since when this
    /// node holds it, or null.
    pub key_id: Option<String>,
    pub key_added_ms: Option<u64>,
}

impl From<&Status> for StatusJson {
    fn from(s: &Status) -> Self {
        StatusJson {
            schema: JSON_SCHEMA,
            instance: s.instance.clone(),
            node: s.node.clone(),
            version: s.version.clone(),
            pid: s.pid,
            started_ms: s.started_ms,
            now_ms: s.now_ms,
            uptime_ms: s.now_ms.saturating_sub(s.started_ms),
            listen: s.listen.clone(),
            socket: s.socket.clone(),
            state_dir: s.state_dir.clone(),
            all_up: all_up(s),
            http_listen: s.http_listen.clone(),
            auth_failures: s.auth_failures,
            refused_sends: s.refused_sends.clone(),
            journal: JournalJson {
                storage_errors: s.journal.storage_errors,
                outbox_msgs: s.journal.outbox_msgs,
                outbox_bytes: s.journal.outbox_bytes,
                inbox_msgs: s.journal.inbox_msgs,
                inbox_bytes: s.journal.inbox_bytes,
                commit_us: s.journal.commit_us.clone(),
                batch_records: s.journal.batch_records.clone(),
                durable: s.journal.durable,
                epoch: format!("{:016x}", s.journal.epoch),
                outbox_next: s.journal.outbox_next,
                inbox_first: s.journal.inbox_first,
                inbox_next: s.journal.inbox_next,
                storage_error: s.journal.storage_error.clone(),
                storage_error_ms: s.journal.storage_error_ms,
            },
            peers: s.peers.iter().map(PeerJson::from).collect(),
            last_reload: s.last_reload.clone(),
        }
    }
}

impl From<&PeerStatus> for PeerJson {
    fn from(p: &PeerStatus) -> Self {
        PeerJson {
            name: p.name.clone(),
            url: p.url.clone(),
            state: match p.state {
                LinkState::Connected => StateJson::Connected,
                LinkState::Connecting => StateJson::Connecting,
                LinkState::Backoff => StateJson::Backoff,
            },
            direction: p.direction.map(|d| match d {
                Direction::Outbound => DirectionJson::Outbound,
                Direction::Inbound => DirectionJson::Inbound,
            }),
            remote_addr: p.remote_addr.clone(),
            local_addr: p.local_addr.clone(),
            connected_since_ms: p.connected_since_ms,
            last_handshake_ms: p.last_handshake_ms,
            rtt_us: p.rtt_us,
            next_attempt_ms: p.next_attempt_ms,
            msgs_sent: p.msgs_sent,
            bytes_sent: p.bytes_sent,
            msgs_received: p.msgs_received,
            bytes_received: p.bytes_received,
            queued_msgs: p.queued_msgs,
            queued_bytes: p.queued_bytes,
            oldest_queued_ms: p.oldest_queued_ms,
            reconnects: p.reconnects,
            reconnect_reasons: p.reconnect_reasons.clone(),
            msgs_acked: p.msgs_acked,
            bytes_acked: p.bytes_acked,
            msgs_lost: p.msgs_lost,
            msgs_lost_since_start: p.msgs_lost_since_start,
            peer_max_message: p.peer_max_message,
            held: p.held.clone(),
            last_error: p.last_error.clone(),
            last_error_ms: p.last_error_ms,
            key_id: p.key_id.clone(),
            key_added_ms: p.key_added_ms,
        }
    }
}

/// What a reload did, in one line: `applied 3s ago: peer c added; ...`.
pub fn reload_line(r: &ReloadReport, now: u64) -> String {
    let when = if now > r.at_ms {
        ago(now, r.at_ms)
    } else {
        "just now".to_string()
    };
    match (&r.error, r.changes.is_empty()) {
        (Some(e), _) => format!("{BAD}refused{BAD:#} {when}, old config kept: {e}"),
        (None, true) => format!("applied {when}: nothing changed"),
        (None, false) => format!("applied {when}: {}", r.changes.join("; ")),
    }
}

/// A duration for people, to the second (`3m 12s`; `0s` below a second).
pub fn human_duration(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

fn ago(now: u64, then: u64) -> String {
    format!("{} ago", human_duration(now.saturating_sub(then)))
}

/// A size for people: bytes below 1 KiB, else one decimal in binary units.
pub fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
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

/// `1 msg`, `12,345 msgs`.
fn count(n: u64, one: &str, many: &str) -> String {
    let unit = if n == 1 { one } else { many };
    format!("{} {unit}", indicatif::HumanCount(n))
}

const HEAD: Style = Style::new().bold();
const LABEL: Style = Style::new().bold();
const GOOD: Style = AnsiColor::Green.on_default().bold();
const WARN: Style = AnsiColor::Yellow.on_default().bold();
const BAD: Style = AnsiColor::Red.on_default();

/// Aligned `label: value` lines under a heading.
struct Block {
    lines: Vec<(String, String)>,
}

impl Block {
    fn new() -> Self {
        Block { lines: Vec::new() }
    }
    fn add(&mut self, label: &str, value: String) {
        self.lines.push((label.to_string(), value));
    }
    fn render(&self, width: usize, out: &mut Vec<String>) {
        for (label, value) in &self.lines {
            let pad = width.saturating_sub(label.len() + 1);
            out.push(format!("  {LABEL}{label}:{LABEL:#}{:pad$} {value}", ""));
        }
    }
}

/// The human view, with ANSI styles (stripped by `anstream` when stdout
/// is not a terminal or `NO_COLOR` is set).
pub fn render(s: &Status) -> String {
    let now = s.now_ms;
    let mut daemon = Block::new();
    daemon.add("pid", s.pid.to_string());
    daemon.add("uptime", human_duration(now.saturating_sub(s.started_ms)));
    daemon.add("listening", s.listen.clone());
    daemon.add("control", s.socket.clone());
    if let Some(h) = &s.http_listen {
        daemon.add("http", format!("{h} (/metrics; peerctl console)"));
    }
    // Both are on disk; `fsync = "never"` only skips the syncs.
    let store = if s.journal.durable {
        format!("durable in {}", s.state_dir)
    } else {
        format!("in {}, not synced (fsync = \"never\")", s.state_dir)
    };
    let inbox = if s.journal.inbox_first >= s.journal.inbox_next {
        format!("inbox empty (next {})", s.journal.inbox_next)
    } else {
        format!(
            "inbox {}..{}",
            s.journal.inbox_first,
            s.journal.inbox_next - 1
        )
    };
    daemon.add(
        "journal",
        format!(
            "{store}, epoch {:016x}, {inbox}, outbox next {}",
            s.journal.epoch, s.journal.outbox_next
        ),
    );
    if let Some(e) = &s.journal.storage_error {
        let when = s
            .journal
            .storage_error_ms
            .map(|t| format!(" (since {})", ago(now, t)))
            .unwrap_or_default();
        daemon.add("storage", format!("{BAD}cannot write: {e}{BAD:#}{when}"));
    }
    if let Some(r) = &s.last_reload {
        daemon.add("last reload", reload_line(r, now));
    }
    let peers: Vec<(String, Block)> = s.peers.iter().map(|p| peer_block(p, now)).collect();
    let width = std::iter::once(&daemon)
        .chain(peers.iter().map(|(_, b)| b))
        .flat_map(|b| b.lines.iter().map(|(l, _)| l.len() + 1))
        .max()
        .unwrap_or(0);
    let mut out = vec![format!(
        "{HEAD}peerd {}{HEAD:#} (node {}, peerlink {})",
        s.instance, s.node, s.version
    )];
    daemon.render(width, &mut out);
    for (head, block) in &peers {
        out.push(String::new());
        out.push(head.clone());
        block.render(width, &mut out);
    }
    out.join("\n")
}

fn peer_block(p: &PeerStatus, now: u64) -> (String, Block) {
    let state = match p.state {
        LinkState::Connected => format!("{GOOD}connected{GOOD:#}"),
        LinkState::Connecting => format!("{WARN}connecting{WARN:#}"),
        LinkState::Backoff => match p.next_attempt_ms {
            Some(t) if t > now => format!(
                "{WARN}backoff{WARN:#}, next attempt in {}",
                humantime::format_duration(Duration::from_millis(t - now))
            ),
            _ => format!("{WARN}backoff{WARN:#}"),
        },
    };
    let head = format!("{HEAD}peer {}{HEAD:#}: {state}", p.name);
    let mut b = Block::new();
    b.add("url", p.url.clone());
    if let (Some(dir), Some(addr)) = (p.direction, &p.remote_addr) {
        let dir = match dir {
            Direction::Outbound => "outbound to",
            Direction::Inbound => "inbound from",
        };
        let local = p
            .local_addr
            .as_ref()
            .map(|l| format!(" (local {l})"))
            .unwrap_or_default();
        b.add("session", format!("{dir} {addr}{local}"));
    }
    if let Some(t) = p.connected_since_ms {
        b.add("connected", ago(now, t));
    }
    if let Some(t) = p.last_handshake_ms {
        b.add("handshake", ago(now, t));
    }
    if let Some(rtt) = p.rtt_us {
        b.add("rtt", format!("{:.2} ms", rtt as f64 / 1000.0));
    }
    if let Some(id) = &p.key_id {
        let age = p
            .key_added_ms
            .map(|t| format!(", held for {}", human_duration(now.saturating_sub(t))))
            .unwrap_or_default();
        b.add("secret", format!("id {id}{age}"));
    }
    b.add(
        "transfer",
        format!(
            "{} ({}) sent, {} ({}) received",
            count(p.msgs_sent, "msg", "msgs"),
            human_size(p.bytes_sent),
            count(p.msgs_received, "msg", "msgs"),
            human_size(p.bytes_received)
        ),
    );
    let oldest = p
        .oldest_queued_ms
        .map(|t| format!(", oldest {}", ago(now, t)))
        .unwrap_or_default();
    b.add(
        "queued",
        format!(
            "{} ({}){oldest}",
            count(p.queued_msgs, "msg", "msgs"),
            human_size(p.queued_bytes)
        ),
    );
    if let Some(h) = &p.held {
        b.add("held", format!("{WARN}{h}{WARN:#}"));
    }
    b.add("acked", count(p.msgs_acked, "msg", "msgs"));
    let reasons: Vec<String> = p
        .reconnect_reasons
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    if reasons.is_empty() {
        b.add("reconnects", p.reconnects.to_string());
    } else {
        b.add(
            "reconnects",
            format!("{} ({})", p.reconnects, reasons.join(", ")),
        );
    }
    if p.msgs_lost > 0 {
        b.add(
            "lost",
            format!(
                "{BAD}{} known lost{BAD:#} ({} since peerd started; see the log)",
                count(p.msgs_lost, "msg", "msgs"),
                p.msgs_lost_since_start
            ),
        );
    }
    if let Some(e) = &p.last_error {
        // An error older than the live session is history: say so, or it
        // reads as a problem with the link that is up.
        let before = match (p.state, p.last_error_ms, p.connected_since_ms) {
            (LinkState::Connected, Some(t), Some(up)) if t <= up => ", before this session",
            _ => "",
        };
        let when = p
            .last_error_ms
            .map(|t| format!(" ({}{before})", ago(now, t)))
            .unwrap_or_default();
        b.add("last error", format!("{BAD}{e}{BAD:#}{when}"));
    }
    (head, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerlink::control::JournalStatus;

    fn sample() -> Status {
        Status {
            instance: "a".into(),
            node: "a".into(),
            version: "0.1.0".into(),
            pid: 42,
            started_ms: 1_000,
            now_ms: 1_000 + 3_723_000,
            listen: "127.0.0.1:8080".into(),
            socket: "/run/peerd/a/control.sock".into(),
            state_dir: "/var/lib/peerd/a".into(),
            http_listen: None,
            auth_failures: 0,
            refused_sends: Default::default(),
            journal: JournalStatus {
                durable: false,
                epoch: u64::MAX,
                outbox_next: 3,
                inbox_next: 1,
                inbox_first: 1,
                storage_error: None,
                storage_error_ms: None,
                ..JournalStatus::default()
            },
            peers: vec![PeerStatus {
                state: LinkState::Backoff,
                msgs_sent: 1,
                bytes_sent: 1536,
                queued_msgs: 2,
                queued_bytes: 10,
                oldest_queued_ms: Some(1_000),
                last_error: Some("connection refused".into()),
                last_error_ms: Some(1_000 + 3_722_000),
                ..PeerStatus::new("b", "ws://127.0.0.1:8081/ws")
            }],
            last_reload: None,
        }
    }

    #[test]
    fn sizes_durations_and_counts() {
        assert_eq!(count(1, "msg", "msgs"), "1 msg");
        assert_eq!(count(100_004, "msg", "msgs"), "100,004 msgs");
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(human_duration(3_723_999), "1h 2m 3s");
        assert_eq!(human_duration(999), "0s");
    }

    #[test]
    fn human_view_is_aligned_and_plain_once_stripped() {
        let text = render(&sample());
        assert!(text.contains("\x1b["), "styled for a terminal");
        let plain = anstream::adapter::strip_str(&text).to_string();
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines[0], "peerd a (node a, peerlink 0.1.0)");
        assert!(plain.contains("\npeer b: backoff\n"), "{plain}");
        assert!(plain.contains("  uptime:     1h 2m 3s\n"), "{plain}");
        assert!(
            plain.contains("  transfer:   1 msg (1.5 KiB) sent, 0 msgs (0 B) received\n"),
            "{plain}"
        );
        assert!(
            plain.contains("  last error: connection refused (1s ago)"),
            "{plain}"
        );
        // Every value starts in the same column.
        let starts: Vec<usize> = lines
            .iter()
            .filter(|l| l.starts_with("  "))
            .map(|l| {
                let colon = l.find(':').unwrap_or(0);
                colon + 1 + l[colon + 1..].len() - l[colon + 1..].trim_start().len()
            })
            .collect();
        assert_eq!(starts.len(), 11);
        assert!(plain.contains("  acked:      0 msgs\n"), "{plain}");
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{plain}");
    }

    #[test]
    fn journal_and_old_errors_are_labelled_for_what_they_are() {
        let plain = |s: &Status| anstream::adapter::strip_str(&render(s)).to_string();
        let mut s = sample();
        assert!(
            plain(&s)
                .contains("  journal:    in /var/lib/peerd/a, not synced (fsync = \"never\"), "),
            "{}",
            plain(&s)
        );
        s.journal.durable = true;
        assert!(plain(&s).contains("  journal:    durable in /var/lib/peerd/a, epoch "));
        // connected after the error: it is history
        s.peers[0].state = LinkState::Connected;
        s.peers[0].connected_since_ms = Some(1_000 + 3_722_500);
        assert!(
            plain(&s).contains("  last error: connection refused (1s ago, before this session)"),
            "{}",
            plain(&s)
        );
        // an error during the session is not
        s.peers[0].connected_since_ms = Some(1_000 + 3_721_000);
        assert!(
            plain(&s).contains("  last error: connection refused (1s ago)\n")
                || plain(&s).ends_with("  last error: connection refused (1s ago)")
        );
    }

    #[test]
    fn json_view_has_lowercase_enums_and_hex_epoch() {
        let mut s = sample();
        let v = serde_json::to_value(StatusJson::from(&s)).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["all_up"], false);
        assert_eq!(v["uptime_ms"], 3_723_000);
        assert_eq!(v["journal"]["epoch"], "ffffffffffffffff");
        assert_eq!(v["peers"][0]["state"], "backoff");
        assert_eq!(v["peers"][0]["direction"], serde_json::Value::Null);
        s.peers[0].state = LinkState::Connected;
        s.peers[0].direction = Some(Direction::Inbound);
        let v = serde_json::to_value(StatusJson::from(&s)).unwrap();
        assert_eq!(v["peers"][0]["state"], "connected");
        assert_eq!(v["peers"][0]["direction"], "inbound");
        assert_eq!(v["all_up"], true);
    }
}
