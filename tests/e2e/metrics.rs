//! `/metrics` (README "Metrics"): parsed by a real OpenMetrics parser (the
//! `prometheus_client` Python package: Debian's python3-prometheus-client,
//! which `.ci/run` installs) while traffic flows, with values that match
//! `peerctl status --json`; and the example alert rules checked by
//! `promtool check rules` (Debian's prometheus). Each says `SKIPPED:`
//! where its tool is missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use peerlink_e2e::http;
use peerlink_e2e::{Daemon, Pair, Sandbox, Value};

const LONG: Duration = Duration::from_secs(60);
/// Messages a sends while /metrics is scraped.
const N: u64 = 100_000;

/// Prints every sample as `name{k="v",...} value`, one per line, sorted
/// labels; fails (non-zero) on anything the parser refuses.
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, float(s.value)))
"#;

/// A Python with `prometheus_client`, if there is one.
fn python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The samples of one scrape: `name{labels}` → value. With a parser, its
/// reading (and a panic if it refuses the text); without, the lines as
/// they are.
fn parse(text: &str, python: Option<&str>) -> BTreeMap<String, f64> {
    let Some(py) = python else {
        return text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect();
    };
    let mut child = Command::new(py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("feed the parser");
    }
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.replace("{}", ""), v.parse().ok()?))
        })
        .collect()
}

fn u(v: &Value) -> f64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}")) as f64
}

#[test]
fn metrics_parse_while_traffic_flows_and_match_status() {
    let py = python();
    if py.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: metrics: the OpenMetrics parser (apt-get install python3-prometheus-client); checking values only"
        );
    }
    let pair = Pair::new("");
    let a_cfg = Sandbox::config(
        "a",
        pair.a_port,
        &[("b", pair.b_port)],
        "http_listen = \"127.0.0.1:0\"",
    );
    std::fs::write(&pair.a.config, a_cfg).expect("rewrite a's config");
    let (a, mut b) = pair.start_linked();
    let addr = a.status()["http_listen"]
        .as_str()
        .expect("http_listen in status")
        .to_string();
    let scrape = || {
        let r = http::get(&addr, "/metrics", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("Content-Type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        r.body
    };

    // The README's sample: the same metrics, with these labels, exist
    // (values are this run's).
    let text = scrape();
    for line in peerlink_e2e::readme_block("metrics-grep").iter().skip(1) {
        let series = line.rsplit_once(' ').map_or(line.as_str(), |(s, _)| s);
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{series} "))),
            "README's {series} is not in /metrics:\n{text}"
        );
    }

    // Scrapes while both sides send.
    let lines: String = (0..N).map(|i| format!("message {i}\n")).collect();
    let b_sends = pair.b.clone();
    let traffic = std::thread::spawn(move || {
        let out = peerlink_e2e::ctl_cmd(&b_sends.socket)
            .args(["send"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(b"from b\n")?;
                }
                c.wait()
            });
        out.is_ok_and(|s| s.success())
    });
    let sending = {
        let a_spec = pair.a.clone();
        std::thread::spawn(move || {
            let mut c = peerlink_e2e::ctl_cmd(&a_spec.socket)
                .arg("send")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("peerctl send");
            if let Some(mut i) = c.stdin.take() {
                let _ = i.write_all(lines.as_bytes());
            }
            c.wait().is_ok_and(|s| s.success())
        })
    };
    // Raw scrapes as fast as they come while a sends; parsed afterwards
    // (the parser is a process of its own).
    let mut texts = Vec::new();
    while !sending.is_finished() {
        texts.push(scrape());
    }
    assert!(sending.join().unwrap_or(false), "a's send failed");
    assert!(traffic.join().unwrap_or(false), "b's send failed");
    let step = texts.len().div_ceil(20).max(1);
    let mut in_flight = 0;
    for text in texts.iter().step_by(step) {
        let m = parse(text, py);
        let sent = m["peerd_sent_messages_total{peer=\"b\"}"];
        let acked = m["peerd_acked_messages_total{peer=\"b\"}"];
        let queued = m["peerd_queued_messages{peer=\"b\"}"];
        assert!(acked <= sent, "acked {acked} > sent {sent}");
        if queued > 0.0 || (sent > 0.0 && sent < N as f64) {
            in_flight += 1;
        }
    }
    eprintln!(
        "metrics: {} scrapes while a sent {N} messages, {in_flight} of those parsed with traffic in flight",
        texts.len()
    );
    assert!(
        in_flight > 0,
        "no scrape saw traffic in flight ({} scrapes)",
        texts.len()
    );

    // A reconnect with a reason: b stops (going away) and comes back.
    b.signal("TERM");
    b.wait_exit(LONG);
    let b = Daemon::start(&pair.b);
    a.wait_connected("b");
    b.wait(LONG, "b has every message", |b| {
        b.peer("a")["msgs_received"] == N
    });
    a.wait(LONG, "a's queue drained", |a| {
        let p = a.peer("b");
        p["queued_msgs"] == 0 && p["msgs_acked"] == N && p["reconnects"] == 1
    });

    // Idle now: status, metrics, status; counters agree with both.
    let before = a.status();
    let m = parse(&scrape(), py);
    let after = a.status();
    let get = |k: &str| -> f64 {
        *m.get(k)
            .unwrap_or_else(|| panic!("no {k} in /metrics: {:#?}", m.keys()))
    };
    let same = |k: &str, status: &dyn Fn(&Value) -> &Value| {
        let (x, y) = (u(status(&before)), u(status(&after)));
        assert_eq!(x, y, "{k} changed while idle");
        assert_eq!(get(k), x, "{k} vs status --json");
    };
    let b_of = |v: &Value| -> Value { v["peers"][0].clone() };
    assert_eq!(b_of(&before)["name"], "b");
    for (metric, field) in [
        ("peerd_sent_messages_total{peer=\"b\"}", "msgs_sent"),
        ("peerd_sent_bytes_total{peer=\"b\"}", "bytes_sent"),
        ("peerd_received_messages_total{peer=\"b\"}", "msgs_received"),
        ("peerd_received_bytes_total{peer=\"b\"}", "bytes_received"),
        ("peerd_acked_messages_total{peer=\"b\"}", "msgs_acked"),
        ("peerd_acked_bytes_total{peer=\"b\"}", "bytes_acked"),
        ("peerd_lost_messages_total{peer=\"b\"}", "msgs_lost"),
        ("peerd_queued_messages{peer=\"b\"}", "queued_msgs"),
        ("peerd_queued_bytes{peer=\"b\"}", "queued_bytes"),
        (
            "peerd_peer_max_message_bytes{peer=\"b\"}",
            "peer_max_message",
        ),
    ] {
        let x = u(&b_of(&before)[field]);
        assert_eq!(x, u(&b_of(&after)[field]), "{field} changed while idle");
        assert_eq!(get(metric), x, "{metric} vs status --json {field}");
    }
    assert_eq!(get("peerd_received_messages_total{peer=\"b\"}"), 1.0);
    assert_eq!(get("peerd_acked_messages_total{peer=\"b\"}"), N as f64);
    assert_eq!(
        get("peerd_link_reconnects_total{peer=\"b\",reason=\"peer_closed\"}"),
        1.0
    );
    assert_eq!(b_of(&after)["reconnect_reasons"]["peer_closed"], 1);
    assert_eq!(get("peerd_link_up{peer=\"b\"}"), 1.0);
    assert_eq!(get("peerd_link_state{peer=\"b\",state=\"connected\"}"), 1.0);
    assert_eq!(
        get("peerd_link_last_handshake_timestamp_seconds{peer=\"b\"}"),
        u(&b_of(&after)["last_handshake_ms"]) / 1000.0
    );
    assert!(get("peerd_link_rtt_seconds{peer=\"b\"}") > 0.0);
    same("peerd_auth_failures_total", &|v| &v["auth_failures"]);
    same(
        "peerd_journal_outbox_messages",
        &|v| &v["journal"]["outbox_msgs"],
    );
    same(
        "peerd_journal_inbox_messages",
        &|v| &v["journal"]["inbox_msgs"],
    );
    same(
        "peerd_journal_inbox_bytes",
        &|v| &v["journal"]["inbox_bytes"],
    );
    same(
        "peerd_journal_storage_errors_total",
        &|v| &v["journal"]["storage_errors"],
    );
    same("peerd_journal_fsync_duration_seconds_count", &|v| {
        &v["journal"]["commit_us"]["count"]
    });
    same("peerd_journal_batch_records_count", &|v| {
        &v["journal"]["batch_records"]["count"]
    });
    same("peerd_journal_batch_records_sum", &|v| {
        &v["journal"]["batch_records"]["sum"]
    });
    assert_eq!(
        get("peerd_journal_fsync_duration_seconds_bucket{le=\"+Inf\"}"),
        get("peerd_journal_fsync_duration_seconds_count")
    );
    // 20 000 messages in far fewer batches: group commit at work.
    let batches = get("peerd_journal_batch_records_count");
    assert!(batches > 0.0 && batches < N as f64, "{batches} batches");
    for reason in ["empty", "too_large", "outbox_full", "storage"] {
        let k = format!("peerd_refused_sends_total{{reason=\"{reason}\"}}");
        let n = after["refused_sends"][reason].as_u64().unwrap_or(0) as f64;
        assert_eq!(get(&k), n, "{k}");
    }
    assert_eq!(
        get("peerd_start_time_seconds"),
        u(&after["started_ms"]) / 1000.0
    );
    assert!(m.keys().any(|k| k.starts_with("peerd_build_info{")));
    // Every metric the example alert rules use is there.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/peerd.alerts.yml"
    ))
    .expect("read the alert rules");
    for name in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("peerd_"))
    {
        assert!(
            m.keys().any(|k| k.starts_with(name)),
            "the alert rules use {name}, which /metrics does not have"
        );
    }
}

#[test]
fn the_example_alert_rules_pass_promtool() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/peerd.alerts.yml");
    let out = match Command::new("promtool")
        .args(["check", "rules", rules])
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: metrics::the_example_alert_rules_pass_promtool: promtool not installed (apt-get install prometheus)"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
