//! `--only hub` (issue 15): one node sending to several peers, all on this
//! machine.
//!
//! - **fan-out**: a hub `h` with 1, 2 and 4 spokes streams 64-byte
//!   messages to every peer (`peerctl send` without `--to`); for each spoke,
//!   the time until the hub has its ack for all of them (acked means stored
//!   in the spoke's durable inbox), as messages/s per spoke and in total.
//!   Then the same number queued with every spoke down: the outbox's bytes
//!   on disk per message (written once whatever the number of peers, so it
//!   must not grow with them), the same with `--to` naming every spoke (the
//!   record then carries the names), and the time the spokes take to drain
//!   it once they are back.
//! - **a spoke down**: a hub with 4 spokes, one of them down for the whole
//!   run, against the same with all 4 up: the others' throughput and their
//!   latency at a fixed offered rate (`peerctl tail -f` on each), as ratios
//!   down / up; then the down spoke comes back and its backlog (everything
//!   the run queued for it) drains: the time it takes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::daemons::{Node, free_port, message_file, now_us};

/// Sizes of one hub run.
pub struct HubPlan {
    /// Messages streamed to the spokes, and queued for the bytes on disk.
    pub messages: u64,
    /// Offered rate and duration of the latency part.
    pub rate: u64,
    pub seconds: u64,
    /// Runs of the spoke-down comparison (each: all up, then one down).
    pub runs: usize,
}

impl HubPlan {
    pub fn new(quick: bool) -> HubPlan {
        if quick {
            HubPlan {
                messages: 50_000,
                rate: 10_000,
                seconds: 2,
                runs: 1,
            }
        } else {
            HubPlan {
                messages: 1_000_000,
                rate: 10_000,
                seconds: 5,
                runs: 3,
            }
        }
    }
}

/// A hub `h` and its spokes `s1..sN`, each linked to the hub only.
struct Star {
    dir: tempfile::TempDir,
    hub: Node,
    spokes: Vec<Node>,
}

impl Star {
    /// Write the configs; start the hub and the first `up` spokes and wait
    /// until the hub is connected to those.
    fn start(n: usize, up: usize, extra: &str) -> Result<Star> {
        let dir = tempfile::Builder::new()
            .prefix("plhub")
            .tempdir_in("/tmp")?;
        let hub_port = free_port()?;
        let names: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
        let ports = (0..n).map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
        let peers: Vec<(&str, u16)> = names
            .iter()
            .map(String::as_str)
            .zip(ports.clone())
            .collect();
        let mut hub = Node::new(dir.path(), "h", hub_port, &peers, extra)?;
        let mut spokes = names
            .iter()
            .zip(&ports)
            .map(|(s, p)| Node::new(dir.path(), s, *p, &[("h", hub_port)], extra))
            .collect::<Result<Vec<Node>>>()?;
        hub.spawn()?;
        for s in spokes.iter_mut().take(up) {
            s.spawn()?;
        }
        let star = Star { dir, hub, spokes };
        star.wait_connected(up)?;
        Ok(star)
    }

    fn names(&self) -> Vec<String> {
        self.spokes.iter().map(|s| s.name.clone()).collect()
    }

    /// The hub is connected to the first `up` spokes.
    fn wait_connected(&self, up: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = &self.names()[..up];
        loop {
            let st = self.hub.status()?;
            let connected = |n: &String| {
                st["peers"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == n.as_str() && p["state"] == "connected")
                })
            };
            if want.iter().all(connected) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the hub did not connect to {want:?} within 20s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Messages the hub has queued for each spoke, by name.
    fn queued(&self) -> Result<Vec<(String, u64)>> {
        let st = self.hub.status()?;
        Ok(st["peers"]
            .as_array()
            .context("status has peers")?
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_string(),
                    p["queued_msgs"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect())
    }

    /// Poll until the hub's queue for each of `spokes` is empty; the time
    /// from `start` at which each was first seen empty (`None`: not within
    /// `limit`).
    fn drained(&self, spokes: &[String], start: Instant, limit: Duration) -> Result<Vec<f64>> {
        let mut done: Vec<Option<f64>> = vec![None; spokes.len()];
        while done.iter().any(Option::is_none) {
            let q = self.queued()?;
            let t = start.elapsed().as_secs_f64();
            for (i, s) in spokes.iter().enumerate() {
                if done[i].is_none() && q.iter().any(|(n, m)| n == s && *m == 0) {
                    done[i] = Some(t);
                }
            }
            if start.elapsed() > limit {
                bail!("queues for {spokes:?} not drained within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// Bytes of the hub's outbox segments on disk.
    fn outbox_bytes(&self) -> Result<u64> {
        dir_bytes(&self.hub.state_dir().join("journal/outbox"))
    }

    /// `peerctl send [--to LIST]` on the hub with `file` as stdin.
    fn send_file(&self, file: &Path, to: Option<&str>) -> Result<std::process::Child> {
        let mut cmd = self.hub.ctl_cmd();
        cmd.arg("send");
        if let Some(to) = to {
            cmd.args(["--to", to]);
        }
        Ok(cmd
            .stdin(std::fs::File::open(file)?)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?)
    }
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        total += e?.metadata()?.len();
    }
    Ok(total)
}

fn wait_ok(child: std::process::Child, what: &str) -> Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Stream `m` messages from the hub to every peer; the time (from the
/// start of the send) at which each of `spokes` had them all.
fn stream(star: &Star, m: u64, spokes: &[String]) -> Result<Vec<f64>> {
    let file = message_file(star.dir.path(), 64, m)?;
    let start = Instant::now();
    let send = star.send_file(&file, None)?;
    // Acked for all only counts once all are accepted.
    wait_ok(send, "peerctl send on the hub")?;
    star.drained(spokes, start, Duration::from_secs(600))
}

/// The fan-out part for `n` spokes.
fn fan_out(n: usize, plan: &HubPlan, extra: &str) -> Result<Value> {
    let m = plan.messages;
    // Live: every spoke up.
    let star = Star::start(n, n, extra)?;
    let names = star.names();
    let times = stream(&star, m, &names)?;
    let per_peer: Vec<f64> = times.iter().map(|t| m as f64 / t).collect();
    let slowest = times.iter().copied().fold(0.0, f64::max);
    let total = (n as u64 * m) as f64 / slowest;
    drop(star);
    // Queued: every spoke down, then back.
    let mut star = Star::start(n, 0, extra)?;
    let before = star.outbox_bytes()?;
    let file = message_file(star.dir.path(), 64, m)?;
    wait_ok(star.send_file(&file, None)?, "queueing on the hub")?;
    let broadcast = star.outbox_bytes()? - before;
    let to_all = names.join(",");
    wait_ok(
        star.send_file(&file, Some(&to_all))?,
        "queueing with --to on the hub",
    )?;
    let addressed = star.outbox_bytes()? - before - broadcast;
    // From the spokes' start (their process start is in it, as it is
    // when a site comes back).
    let start = Instant::now();
    for s in &mut star.spokes {
        s.spawn()?;
    }
    let startup = start.elapsed().as_secs_f64();
    let drain = star.drained(&names, start, Duration::from_secs(600))?;
    let drain_s = drain.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "spokes": n, "messages": m, "size": 64,
        "seconds_per_peer": times, "msgs_per_s_per_peer": per_peer,
        "msgs_per_s_total": total,
        "outbox_bytes_per_msg": broadcast as f64 / m as f64,
        "outbox_bytes_per_msg_to_all": addressed as f64 / m as f64,
        "backlog_msgs_per_peer": 2 * m, "backlog_drain_seconds": drain_s,
        "backlog_drain_msgs_per_s_total": (2 * m * n as u64) as f64 / drain_s,
        "backlog_spokes_startup_seconds": startup,
    }))
}

/// Offer `rate` 64-byte messages/s from the hub to every peer for
/// `seconds`; `peerctl tail -f` on each of the `up` first spokes stamps
/// arrivals. Returns p50, p99 and the number of arrivals.
fn latency(star: &Star, up: usize, rate: u64, seconds: u64) -> Result<(f64, f64, usize)> {
    let (tx, rx) = std::sync::mpsc::channel::<Option<f64>>();
    let mut tails = Vec::new();
    for s in &star.spokes[..up] {
        let mut tail = s
            .ctl_cmd()
            .args(["tail", "-f", "--json", "-n", "0"])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = tail.stdout.take().context("tail stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let now = now_us();
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let sent: Option<u64> = v["body"]
                    .as_str()
                    .and_then(|b| b.split(' ').next())
                    .and_then(|t| t.parse().ok());
                let ms = sent.map(|s| now.saturating_sub(s) as f64 / 1000.0);
                if tx.send(ms).is_err() {
                    break;
                }
            }
        });
        tails.push(tail);
    }
    drop(tx);
    // Every follower attached: a probe comes back from each.
    let attach = Instant::now();
    let mut probes = 0;
    while probes < up {
        star.hub.ctl(&["send", "probe"])?;
        let wait = Instant::now();
        while probes < up && wait.elapsed() < Duration::from_millis(500) {
            if let Ok(None) = rx.recv_timeout(Duration::from_millis(100)) {
                probes += 1;
            }
        }
        if probes < up {
            // Start over: some follower missed every probe so far.
            probes = 0;
            while rx.try_recv().is_ok() {}
        }
        if attach.elapsed() > Duration::from_secs(20) {
            bail!("tail -f on the spokes never showed the probe");
        }
    }
    let total = (rate * seconds) as usize;
    crate::daemons::paced_send(&star.hub, rate as f64, total)?;
    let mut lat = Vec::with_capacity(total * up);
    while lat.len() < total * up {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(ms)) => lat.push(ms),
            Ok(None) => {}
            Err(_) => break,
        }
    }
    for mut t in tails {
        let _ = t.kill();
        let _ = t.wait();
    }
    // The first 5% include the followers catching up; leave them out.
    let skip = lat.len() / 20;
    let mut lat: Vec<f64> = lat.drain(skip..).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((crate::pct(&lat, 0.5), crate::pct(&lat, 0.99), lat.len()))
}

/// One run of the spoke-down comparison: 4 spokes, `up` of them running.
/// Throughput and latency of the first three (always up).
fn four_spokes(up: usize, plan: &HubPlan, extra: &str) -> Result<Value> {
    let mut star = Star::start(4, up, extra)?;
    let names = star.names();
    let others = &names[..3];
    let times = stream(&star, plan.messages, others)?;
    let per_peer: Vec<f64> = times.iter().map(|t| plan.messages as f64 / t).collect();
    let (p50, p99, n) = latency(&star, 3, plan.rate, plan.seconds)?;
    let mut doc = json!({
        "spokes_up": up, "msgs_per_s_per_peer": per_peer,
        "msgs_per_s_median": crate::median(&mut per_peer.clone()),
        "latency_p50_ms": p50, "latency_p99_ms": p99, "latency_samples": n,
    });
    if up < 4 {
        let backlog = star
            .queued()?
            .iter()
            .find(|(s, _)| *s == names[3])
            .map(|q| q.1)
            .context("the down spoke's queue")?;
        let start = Instant::now();
        star.spokes[3].spawn()?;
        doc["backlog_startup_seconds"] = json!(start.elapsed().as_secs_f64());
        let drain = star.drained(&names[3..], start, Duration::from_secs(600))?;
        let drain_s = drain.first().copied().unwrap_or(0.0);
        doc["backlog_msgs"] = json!(backlog);
        doc["backlog_drain_seconds"] = json!(drain_s);
        doc["backlog_drain_msgs_per_s"] = json!(backlog as f64 / drain_s);
    }
    Ok(doc)
}

/// The whole hub part: JSON for results.json and rows for the table.
pub fn run(plan: &HubPlan, extra: &str) -> Result<(Value, Vec<String>)> {
    let mut rows = Vec::new();
    let mut fan = Vec::new();
    for n in [1, 2, 4] {
        let r = fan_out(n, plan, extra).with_context(|| format!("hub to {n} spokes"))?;
        let per: Vec<String> = r["msgs_per_s_per_peer"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.0}", v.as_f64().unwrap_or(0.0)))
            .collect();
        rows.push(format!(
            "{:<28}{:>10.0} msgs/s total, per spoke {}; outbox {:.1} B/msg ({:.1} with --to all); \
             backlog of {} per spoke drained in {:.2}s",
            format!("hub to {n} spoke{}", if n > 1 { "s" } else { "" }),
            r["msgs_per_s_total"].as_f64().unwrap_or(0.0),
            per.join(" "),
            r["outbox_bytes_per_msg"].as_f64().unwrap_or(0.0),
            r["outbox_bytes_per_msg_to_all"].as_f64().unwrap_or(0.0),
            r["backlog_msgs_per_peer"],
            r["backlog_drain_seconds"].as_f64().unwrap_or(0.0),
        ));
        fan.push(r);
    }
    // Alternating, so a change in the machine's load hits both alike; the
    // ratios are of medians.
    let (mut all_up, mut one_down) = (Vec::new(), Vec::new());
    for run in 0..plan.runs {
        all_up.push(four_spokes(4, plan, extra).with_context(|| format!("4 up, run {run}"))?);
        one_down.push(four_spokes(3, plan, extra).with_context(|| format!("1 down, run {run}"))?);
    }
    let med = |runs: &[Value], k: &str| {
        crate::median(
            &mut runs
                .iter()
                .map(|r| r[k].as_f64().unwrap_or(0.0))
                .collect::<Vec<_>>(),
        )
    };
    let ratio = |k: &str| med(&one_down, k) / med(&all_up, k);
    rows.push(format!(
        "{:<28}others' msgs/s x{:.2}, latency p50 x{:.2}, p99 x{:.2} (one down / all up, medians \
         of {}: {:.0} vs {:.0} msgs/s; p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms at {}/s)",
        "hub, a spoke down",
        ratio("msgs_per_s_median"),
        ratio("latency_p50_ms"),
        ratio("latency_p99_ms"),
        plan.runs,
        med(&one_down, "msgs_per_s_median"),
        med(&all_up, "msgs_per_s_median"),
        med(&one_down, "latency_p50_ms"),
        med(&all_up, "latency_p50_ms"),
        med(&one_down, "latency_p99_ms"),
        med(&all_up, "latency_p99_ms"),
        plan.rate
    ));
    rows.push(format!(
        "{:<28}{:.0} msgs drained in {:.2}s ({:.0} msgs/s; median of {}) once it is back",
        "hub, the down spoke's queue",
        med(&one_down, "backlog_msgs"),
        med(&one_down, "backlog_drain_seconds"),
        med(&one_down, "backlog_drain_msgs_per_s"),
        plan.runs,
    ));
    let doc = json!({
        "fan_out": fan,
        "spoke_down": {
            "all_up": all_up, "one_down": one_down,
            "ratio_msgs_per_s": ratio("msgs_per_s_median"),
            "note": "ratios of the medians over runs; one down / all up",
            "ratio_latency_p50": ratio("latency_p50_ms"),
            "ratio_latency_p99": ratio("latency_p99_ms"),
            "offered_per_s": plan.rate, "seconds": plan.seconds,
        },
    });
    Ok((doc, rows))
}
