//! `/metrics`: the status snapshot ([`crate::status::Observed::snapshot`])
//! in the OpenMetrics text format, through `prometheus-client` (the
//! official Rust client), named by the Prometheus conventions: a `peerd_`
//! prefix, base units (seconds, bytes), `_total` on counters, one `peer`
//! label. Made from one snapshot per scrape, so `/metrics` and `peerctl
//! status --json` never disagree on what they both show. The metrics are
//! listed in README "Metrics".

use peerlink::control::{Histogram, LinkState, Status};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `reason` values of `peerd_link_reconnects_total` (see
/// [`crate::link::reconnect_reason`]); each is shown, at 0 until it
/// happens, so rates work from the first scrape.
pub const RECONNECT_REASONS: &[&str] = &[
    "timeout",
    "peer_closed",
    "connection",
    "storage",
    "protocol",
];
/// The `reason` values of `peerd_refused_sends_total`.
pub const REFUSED_REASONS: &[&str] = &[
    "unknown_peer",
    "empty",
    "too_large",
    "peer_max_message",
    "outbox_full",
    "shutting_down",
    "storage",
];

/// The metrics of one snapshot, as text.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("peerd");
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!("cannot encode metrics: {e}");
    }
    out
}

#[derive(Debug)]
struct Snapshot(Status);

type Labels = Vec<(&'static str, String)>;

/// One metric family: its samples, each with labels.
enum Samples {
    Gauge(Vec<(Labels, f64)>),
    Counter(Vec<(Labels, u64)>),
}

fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: Samples,
) -> Result<(), std::fmt::Error> {
    let kind = match samples {
        Samples::Gauge(_) => MetricType::Gauge,
        Samples::Counter(_) => MetricType::Counter,
    };
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    match samples {
        // One sample without labels: the family's own.
        Samples::Gauge(v) if v.len() == 1 && v[0].0.is_empty() => {
            gauge(v[0].1, m)?;
        }
        Samples::Counter(v) if v.len() == 1 && v[0].0.is_empty() => {
            ConstCounter::new(v[0].1).encode(m)?;
        }
        Samples::Gauge(v) => {
            for (labels, value) in v {
                gauge(value, m.encode_family(&labels)?)?;
            }
        }
        Samples::Counter(v) => {
            for (labels, value) in v {
                ConstCounter::new(value).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// A gauge, written as an integer when it is one (`1`, not `1.0`).
fn gauge(v: f64, m: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        ConstGauge::new(v as i64).encode(m)
    } else {
        ConstGauge::new(v).encode(m)
    }
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    h: &Histogram,
    divisor: f64,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
    let mut buckets: Vec<(f64, u64)> = h
        .bounds
        .iter()
        .zip(&h.counts)
        .map(|(b, c)| (*b as f64 / divisor, *c))
        .collect();
    buckets.push((f64::MAX, h.counts.last().copied().unwrap_or(0)));
    m.encode_histogram::<NoLabelSet>(h.sum as f64 / divisor, h.count, &buckets, None)
}

fn one(v: f64) -> Vec<(Labels, f64)> {
    vec![(Vec::new(), v)]
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use Samples::{Counter, Gauge};
        let s = &self.0;
        let e = &mut enc;
        let j = &s.journal;
        family(
            e,
            "build_info",
            "Always 1; the peerd version and instance in labels.",
            None,
            Gauge(vec![(
                vec![
                    ("version", s.version.clone()),
                    ("instance", s.instance.clone()),
                ],
                1.0,
            )]),
        )?;
        family(
            e,
            "start_time",
            "When this daemon started (Unix time).",
            Some(Unit::Seconds),
            Gauge(one(secs(s.started_ms))),
        )?;
        family(
            e,
            "last_reload_successful",
            "1 if the last reload (SIGHUP, peerctl reload) was applied, 0 if refused (absent before any).",
            None,
            Gauge(
                s.last_reload
                    .iter()
                    .map(|r| (Vec::new(), flag(r.applied)))
                    .collect(),
            ),
        )?;
        family(
            e,
            "last_reload_timestamp",
            "When the last reload was asked for (Unix time; absent before any).",
            Some(Unit::Seconds),
            Gauge(
                s.last_reload
                    .iter()
                    .map(|r| (Vec::new(), secs(r.at_ms)))
                    .collect(),
            ),
        )?;
        family(
            e,
            "auth_failures",
            "Peer handshakes refused for a wrong or missing proof of the secret, either direction.",
            None,
            Counter(vec![(Vec::new(), s.auth_failures)]),
        )?;
        let refused = REFUSED_REASONS
            .iter()
            .map(|r| {
                let n = s.refused_sends.get(*r).copied().unwrap_or(0);
                (vec![("reason", r.to_string())], n)
            })
            .collect();
        family(
            e,
            "refused_sends",
            "Sends refused (peerctl send, the console), by reason.",
            None,
            Counter(refused),
        )?;
        family(
            e,
            "journal_durable",
            "1 if the journal syncs every batch to disk (fsync = batch).",
            None,
            Gauge(one(flag(j.durable))),
        )?;
        family(
            e,
            "journal_outbox_messages",
            "Messages in the outbox not yet acknowledged by every peer.",
            None,
            Gauge(one(j.outbox_msgs as f64)),
        )?;
        family(
            e,
            "journal_outbox",
            "Bytes on disk of the outbox records not yet acknowledged by every peer.",
            Some(Unit::Bytes),
            Gauge(one(j.outbox_bytes as f64)),
        )?;
        family(
            e,
            "journal_inbox_messages",
            "Received messages kept in the inbox (not yet trimmed by inbox_retention).",
            None,
            Gauge(one(j.inbox_msgs as f64)),
        )?;
        family(
            e,
            "journal_inbox",
            "Bytes on disk of the inbox records kept.",
            Some(Unit::Bytes),
            Gauge(one(j.inbox_bytes as f64)),
        )?;
        family(
            e,
            "journal_storage_error",
            "1 while journal writes fail (disk full, read-only, I/O error); the links pause.",
            None,
            Gauge(one(flag(j.storage_error.is_some()))),
        )?;
        family(
            e,
            "journal_storage_errors",
            "Journal writes that failed.",
            None,
            Counter(vec![(Vec::new(), j.storage_errors)]),
        )?;
        for (name, help, v) in [
            (
                "journal_outbox_next_sequence",
                "The next outbox sequence number (this epoch): messages accepted so far plus one.",
                j.outbox_next,
            ),
            (
                "journal_inbox_next_sequence",
                "The next inbox sequence number (what tail --from takes).",
                j.inbox_next,
            ),
            (
                "journal_inbox_first_sequence",
                "The oldest inbox sequence number kept.",
                j.inbox_first,
            ),
        ] {
            family(e, name, help, None, Gauge(one(v as f64)))?;
        }
        family(
            e,
            "journal_storage_error_timestamp",
            "When journal writes started failing (Unix time; absent while they work).",
            Some(Unit::Seconds),
            Gauge(j.storage_error_ms.map(|t| one(secs(t))).unwrap_or_default()),
        )?;
        histogram(
            e,
            "journal_fsync_duration",
            "Time to write and fsync one batch of records (group commit).",
            Some(Unit::Seconds),
            &j.commit_us,
            1e6,
        )?;
        histogram(
            e,
            "journal_batch_records",
            "Records stored by one batch (one write and fsync).",
            None,
            &j.batch_records,
            1.0,
        )?;

        let per_peer = |f: &dyn Fn(&peerlink::control::PeerStatus) -> Option<f64>| {
            s.peers
                .iter()
                .filter_map(|p| f(p).map(|v| (vec![("peer", p.name.clone())], v)))
                .collect::<Vec<_>>()
        };
        let per_peer_n = |f: &dyn Fn(&peerlink::control::PeerStatus) -> u64| {
            s.peers
                .iter()
                .map(|p| (vec![("peer", p.name.clone())], f(p)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "link_up",
            "1 if the link to the peer is connected.",
            None,
            Gauge(per_peer(&|p| Some(flag(p.state == LinkState::Connected)))),
        )?;
        let states = s
            .peers
            .iter()
            .flat_map(|p| {
                [
                    (LinkState::Connected, "connected"),
                    (LinkState::Connecting, "connecting"),
                    (LinkState::Backoff, "backoff"),
                ]
                .map(|(st, name)| {
                    (
                        vec![("peer", p.name.clone()), ("state", name.to_string())],
                        flag(p.state == st),
                    )
                })
            })
            .collect();
        family(
            e,
            "link_state",
            "1 for the link's current state (connected, connecting, backoff), 0 for the others.",
            None,
            Gauge(states),
        )?;
        family(
            e,
            "link_rtt",
            "Round-trip time of the last ping on the live session (absent while down).",
            Some(Unit::Seconds),
            Gauge(per_peer(&|p| p.rtt_us.map(|us| us as f64 / 1e6))),
        )?;
        family(
            e,
            "link_last_handshake_timestamp",
            "When the last session with the peer completed its handshake (Unix time).",
            Some(Unit::Seconds),
            Gauge(per_peer(&|p| p.last_handshake_ms.map(secs))),
        )?;
        family(
            e,
            "link_connected_since_timestamp",
            "When the live session came up (Unix time; absent while down).",
            Some(Unit::Seconds),
            Gauge(per_peer(&|p| p.connected_since_ms.map(secs))),
        )?;
        family(
            e,
            "link_next_attempt_timestamp",
            "In backoff: when the next dial is due (Unix time).",
            Some(Unit::Seconds),
            Gauge(per_peer(&|p| p.next_attempt_ms.map(secs))),
        )?;
        family(
            e,
            "link_last_error_timestamp",
            "When the last thing went wrong with the link (Unix time; the text is in peerctl status).",
            Some(Unit::Seconds),
            Gauge(per_peer(&|p| p.last_error_ms.map(secs))),
        )?;
        let reconnects = s
            .peers
            .iter()
            .flat_map(|p| {
                RECONNECT_REASONS.iter().map(|r| {
                    (
                        vec![("peer", p.name.clone()), ("reason", r.to_string())],
                        p.reconnect_reasons.get(*r).copied().unwrap_or(0),
                    )
                })
            })
            .collect();
        family(
            e,
            "link_reconnects",
            "Sessions re-established after the link went down, by why the one before ended.",
            None,
            Counter(reconnects),
        )?;
        family(
            e,
            "peer_secret_added_timestamp",
            "When this node first held the secret the live session authenticated with (Unix time; for rotation).",
            Some(Unit::Seconds),
            Gauge(per_peer(&|p| p.key_added_ms.map(secs))),
        )?;
        family(
            e,
            "peer_max_message",
            "The largest message the peer takes (its max_message, from its last handshake).",
            Some(Unit::Bytes),
            Gauge(per_peer(&|p| p.peer_max_message.map(|m| m as f64))),
        )?;
        for (name, help, unit, f) in [
            (
                "sent_messages",
                "Messages put on the wire to the peer (resends included).",
                None,
                (|p| p.msgs_sent) as fn(&peerlink::control::PeerStatus) -> u64,
            ),
            (
                "sent",
                "Message body bytes put on the wire to the peer (resends included).",
                Some(Unit::Bytes),
                |p| p.bytes_sent,
            ),
            (
                "received_messages",
                "Messages from the peer stored in the inbox (duplicates not counted).",
                None,
                |p| p.msgs_received,
            ),
            (
                "received",
                "Message body bytes from the peer stored in the inbox.",
                Some(Unit::Bytes),
                |p| p.bytes_received,
            ),
            (
                "acked_messages",
                "Our messages the peer has acknowledged as stored (since the daemon started).",
                None,
                |p| p.msgs_acked,
            ),
            (
                "acked",
                "Bytes of our messages the peer has acknowledged, as stored in the outbox (body and framing).",
                Some(Unit::Bytes),
                |p| p.bytes_acked,
            ),
            (
                "lost_messages",
                "Messages known lost between us and the peer, either way.",
                None,
                |p| p.msgs_lost,
            ),
        ] {
            family(e, name, help, unit, Counter(per_peer_n(&f)))?;
        }
        family(
            e,
            "queued_messages",
            "Messages waiting for the peer's acknowledgement.",
            None,
            Gauge(per_peer(&|p| Some(p.queued_msgs as f64))),
        )?;
        family(
            e,
            "queued",
            "Bytes on disk of the messages waiting for the peer.",
            Some(Unit::Bytes),
            Gauge(per_peer(&|p| Some(p.queued_bytes as f64))),
        )?;
        family(
            e,
            "queued_oldest_age",
            "Age of the oldest message waiting for the peer (0 when none waits).",
            Some(Unit::Seconds),
            Gauge(per_peer(&|p| {
                Some(
                    p.oldest_queued_ms
                        .map(|t| secs(s.now_ms.saturating_sub(t)))
                        .unwrap_or(0.0),
                )
            })),
        )?;
        family(
            e,
            "queue_held",
            "1 while the queue to the peer is held by a message it cannot take (peerctl drop).",
            None,
            Gauge(per_peer(&|p| Some(flag(p.held.is_some())))),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerlink::control::{JournalStatus, PeerStatus};

    fn status() -> Status {
        let mut p = PeerStatus::new("b", "ws://127.0.0.1:8081/ws");
        p.state = LinkState::Connected;
        p.rtt_us = Some(1500);
        p.msgs_sent = 3;
        p.bytes_sent = 42;
        p.reconnect_reasons.insert("timeout".into(), 2);
        let mut commit = Histogram::new(&[100, 1000]);
        commit.observe(150);
        Status {
            instance: "a".into(),
            node: "a".into(),
            version: "0.1.0".into(),
            pid: 1,
            started_ms: 1_000,
            now_ms: 2_000,
            listen: String::new(),
            socket: String::new(),
            state_dir: String::new(),
            http_listen: None,
            auth_failures: 4,
            refused_sends: [("empty".to_string(), 5)].into(),
            journal: JournalStatus {
                durable: true,
                epoch: 1,
                outbox_next: 1,
                inbox_next: 1,
                inbox_first: 1,
                storage_error: None,
                storage_error_ms: None,
                storage_errors: 0,
                outbox_msgs: 0,
                outbox_bytes: 0,
                inbox_msgs: 0,
                inbox_bytes: 0,
                commit_us: commit,
                batch_records: Histogram::new(&[1]),
            },
            peers: vec![p],
            last_reload: None,
        }
    }

    #[test]
    fn names_follow_the_conventions() {
        let text = render(&status());
        for line in [
            "peerd_build_info{version=\"0.1.0\",instance=\"a\"} 1",
            "peerd_start_time_seconds 1",
            "peerd_auth_failures_total 4",
            "peerd_refused_sends_total{reason=\"empty\"} 5",
            "peerd_refused_sends_total{reason=\"outbox_full\"} 0",
            "peerd_link_up{peer=\"b\"} 1",
            "peerd_link_state{peer=\"b\",state=\"backoff\"} 0",
            "peerd_link_rtt_seconds{peer=\"b\"} 0.0015",
            "peerd_link_reconnects_total{peer=\"b\",reason=\"timeout\"} 2",
            "peerd_sent_messages_total{peer=\"b\"} 3",
            "peerd_sent_bytes_total{peer=\"b\"} 42",
            "peerd_journal_fsync_duration_seconds_bucket{le=\"0.0001\"} 0",
            "peerd_journal_fsync_duration_seconds_bucket{le=\"0.001\"} 1",
            "peerd_journal_fsync_duration_seconds_bucket{le=\"+Inf\"} 1",
            "# TYPE peerd_journal_fsync_duration_seconds histogram",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // A metric absent while unknown, not a made-up 0.
        assert!(!text.contains("peerd_link_last_handshake_timestamp_seconds{"));
    }
}
