//! `make bench` (SPEC §10): starts real `peerd` pairs on loopback and
//! measures, in one run,
//!
//! - end-to-end throughput from `peerctl send` (a stdin stream) on a to b's
//!   inbox, for 64 B, 1 KiB and 64 KiB messages (median of 3 runs);
//! - latency send → arrival at b (`peerctl tail -f` on b) at fixed offered
//!   rates: p50, p99, p99.9;
//! - RSS of each daemon idle and at peak;
//! - the drain rate of a backlog queued while b was down;
//! - the same machine's ceiling: a bare tokio-tungstenite stream of the
//!   same messages (batched flushes), with every throughput also given as
//!   a ratio to it;
//! - what users see (`seen`): send → `tail -f` stdout, a plain WebSocket
//!   client, `tail --from 1`, the tail client alone, and websocat →
//!   websocat as a reference, with ratios to websocat and the ceiling.
//!
//! Results go to `target/bench/results.json` and a table on stdout. This is
//! a tool, not a test: it asserts nothing about speed.

mod ceiling;
mod daemons;
mod hub;
mod seen;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use daemons::{Pair, message_file, now_us};

const RUNS: usize = 3;

struct Plan {
    sizes: Vec<(usize, u64)>,
    rates: Vec<(u64, Duration)>,
    backlog: u64,
    /// Messages in each of the `seen` runs.
    seen: u64,
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only latency` (or throughput, backlog, seen, hub): one part, for profiling.
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wants = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let out_path = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .unwrap_or_else(|| "target/bench/results.json".into());
    let plan = if quick {
        Plan {
            sizes: vec![(64, 200_000), (1024, 50_000), (65536, 1_000)],
            rates: vec![
                (1_000, Duration::from_secs(1)),
                (10_000, Duration::from_secs(1)),
            ],
            backlog: 100_000,
            seen: 200_000,
        }
    } else {
        Plan {
            sizes: vec![(64, 2_000_000), (1024, 300_000), (65536, 5_000)],
            rates: vec![
                (1_000, Duration::from_secs(5)),
                (10_000, Duration::from_secs(5)),
            ],
            backlog: 1_000_000,
            seen: 1_000_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut results = serde_json::Map::new();

    // The disk's ceiling for group-committed sequential writes, where the
    // daemons keep their journals.
    let disk_dir = tempfile::Builder::new()
        .prefix("plbench")
        .tempdir_in("/tmp")?;
    let mut disk = Vec::new();
    for _ in 0..RUNS {
        disk.push(ceiling::disk(
            disk_dir.path(),
            if quick { 256 << 20 } else { 1 << 30 },
            64 << 10,
            4 << 20,
        )?);
    }
    let disk_bps = median(&mut disk);
    results.insert(
        "disk_ceiling".into(),
        json!({"bytes_per_s": disk_bps, "runs": disk, "block": 65536, "fsync_every": 4 << 20}),
    );

    // Throughput, with the ceiling measured right before each size.
    let mut tput = Vec::new();
    for &(size, n) in plan.sizes.iter().filter(|_| wants("throughput")) {
        let mut ceil = Vec::new();
        for _ in 0..RUNS {
            let d = rt.block_on(ceiling::run(size, n, ceiling::BATCH))?;
            ceil.push(n as f64 / d.as_secs_f64());
        }
        let ceiling = median(&mut ceil);
        let mut rates = Vec::new();
        let mut rss = Vec::new();
        for run in 0..RUNS {
            let (rate, mem) =
                throughput(size, n).with_context(|| format!("throughput {size} B, run {run}"))?;
            eprintln!("  {size} B run {}: {:.0} msgs/s", run + 1, rate);
            rates.push(rate);
            rss.push(mem);
        }
        let all = rates.clone();
        let rate = median(&mut rates);
        let mb = rate * size as f64 / 1e6;
        // Both journals write every byte (plus record headers) to one disk.
        let disk_bound_mb = disk_bps / 2.0 / 1e6;
        rows.push(format!(
            "{:<28}{:>14.0}{:>10.1}{:>14.0}{:>8.3}{:>12.1}{:>8.3}",
            format!("throughput {}", human_size(size)),
            rate,
            mb,
            ceiling,
            rate / ceiling,
            disk_bound_mb,
            mb / disk_bound_mb
        ));
        tput.push(json!({
            "size": size, "messages": n, "runs_msgs_per_s": all,
            "msgs_per_s": rate, "mb_per_s": mb,
            "ceiling_msgs_per_s": ceiling, "ceiling_runs": ceil, "ceiling_mb_per_s": ceiling * size as f64 / 1e6,
            "ratio_to_ceiling": rate / ceiling, "rss": rss,
            "disk_bound_mb_per_s": disk_bps / 2.0 / 1e6, "ratio_to_disk_bound": mb / (disk_bps / 2.0 / 1e6),
        }));
    }
    results.insert("throughput".into(), Value::Array(tput));

    let mut lat = Vec::new();
    if wants("latency") {
        let f = ceiling::fsync_latencies(disk_dir.path(), if quick { 500 } else { 3000 })?;
        let (p50, p99, p999) = (pct(&f, 0.5), pct(&f, 0.99), pct(&f, 0.999));
        rows.push(format!(
            "{:<28}p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  (one fdatasync; a message waits for two, in parallel)",
            "disk fdatasync", p50, p99, p999
        ));
        results.insert(
            "fdatasync_ms".into(),
            json!({"p50": p50, "p99": p99, "p999": p999, "samples": f.len()}),
        );
    }
    for &(rate, dur) in plan.rates.iter().filter(|_| wants("latency")) {
        let (p50, p99, p999, n) =
            latency(rate, dur).with_context(|| format!("latency at {rate}/s"))?;
        rows.push(format!(
            "{:<28}p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  ({n} msgs)",
            format!("latency at {rate}/s"),
            p50,
            p99,
            p999
        ));
        lat.push(
            json!({"offered_per_s": rate, "seconds": dur.as_secs_f64(), "messages": n,
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p999}),
        );
    }
    results.insert("latency".into(), Value::Array(lat));

    if wants("backlog") {
        let backlog = backlog(plan.backlog).context("backlog")?;
        rows.push(format!(
            "{:<28}{:>14.0} msgs/s drain ({} msgs queued in {:.2}s)",
            "backlog drain 64 B",
            backlog["drain_msgs_per_s"].as_f64().unwrap_or(0.0),
            plan.backlog,
            backlog["queue_seconds"].as_f64().unwrap_or(0.0)
        ));
        results.insert("backlog".into(), backlog);
    }

    if wants("seen") {
        let ceiling64 = results["throughput"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["size"] == 64)
            .and_then(|t| t["ceiling_msgs_per_s"].as_f64());
        let (mut seen_rows, seen) =
            seen_part(&rt, plan.seen, ceiling64, disk_dir.path()).context("seen")?;
        rows.append(&mut seen_rows);
        results.insert("seen".into(), seen);
    }
    if wants("hub") {
        let hub_plan = hub::HubPlan::new(quick);
        let (doc, hub_rows) = hub::run(&hub_plan, &extra_config()).context("hub")?;
        rows.extend(hub_rows);
        results.insert("hub".into(), doc);
    }

    let machine = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "date_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "quick": quick,
    });
    let doc = json!({"machine": machine, "results": results});
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&doc)?)?;

    println!(
        "\n{:<28}{:>14}{:>10}{:>14}{:>8}{:>12}{:>8}",
        "", "msgs/s", "MB/s", "ceiling/s", "ratio", "disk/2 MB/s", "ratio"
    );
    for r in rows {
        println!("{r}");
    }
    print_rss(&doc);
    println!(
        "{:<28}{:.1} MB/s (64 KiB writes, fdatasync every 4 MiB)",
        "disk ceiling",
        disk_bps / 1e6
    );
    println!("\nresults: {out_path}");
    Ok(())
}

/// The largest idle and peak RSS read, each `None` where no part that
/// reads it ran (or /proc could not be read): never a made-up zero.
fn print_rss(doc: &Value) {
    let mut idle: Option<u64> = None;
    let mut peak: Option<u64> = None;
    for t in doc["results"]["throughput"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for r in t["rss"].as_array().into_iter().flatten() {
            idle = idle.max(r["idle_max"].as_u64());
            peak = peak.max(r["peak_max"].as_u64());
        }
    }
    peak = peak.max(doc["results"]["backlog"]["peak_max"].as_u64());
    let mib = |v: Option<u64>| match v {
        Some(b) => format!("{:.1} MiB", b as f64 / 1048576.0),
        None => "not measured".to_string(),
    };
    let note = match (idle, peak) {
        (None, None) => " (only the throughput and backlog parts read it)",
        _ => " (largest of either daemon)",
    };
    println!(
        "{:<28}idle {}, peak {}{note}",
        "RSS per daemon",
        mib(idle),
        mib(peak)
    );
}

/// What users see, 64-byte messages (see `seen`): rows and the JSON.
fn seen_part(
    rt: &tokio::runtime::Runtime,
    n: u64,
    ceiling64: Option<f64>,
    scratch: &std::path::Path,
) -> Result<(Vec<String>, Value)> {
    let extra = extra_config();
    let ceiling = match ceiling64 {
        Some(c) => c,
        None => {
            let mut ceil = Vec::new();
            for _ in 0..RUNS {
                let d = rt.block_on(ceiling::run(64, n, ceiling::BATCH))?;
                ceil.push(n as f64 / d.as_secs_f64());
            }
            median(&mut ceil)
        }
    };
    let mut rows = Vec::new();
    let mut out = serde_json::Map::new();
    out.insert("messages".into(), json!(n));
    out.insert("size".into(), json!(64));
    out.insert("ceiling_msgs_per_s".into(), json!(ceiling));

    // The reference first: every other row is a ratio to it.
    // websocat moves one line per message at tens of thousands a second
    // here: fewer messages keep the run short, the rate is steady.
    let ws_n = n.min(100_000);
    let measured = seen::websocat().and_then(|bin| {
        let mut runs = Vec::new();
        for run in 0..RUNS {
            let r = seen::websocat_pair(&bin, scratch, ws_n)
                .map_err(|e| format!("{} failed in run {}: {e:#}", bin.display(), run + 1))?;
            eprintln!("  websocat → websocat run {}: {r:.0} msgs/s", run + 1);
            runs.push(r);
        }
        Ok((bin, runs))
    });
    let websocat = match measured {
        Ok((bin, mut runs)) => {
            let all = runs.clone();
            let rate = median(&mut runs);
            rows.push(format!(
                "{:<28}{:>14.0} msgs/s  {:.3} of ceiling  (reference: no journal, no durability)",
                "websocat → websocat",
                rate,
                rate / ceiling
            ));
            out.insert(
                "websocat".into(),
                json!({"msgs_per_s": rate, "runs": all, "ratio_to_ceiling": rate / ceiling, "messages": ws_n,
                    "binary": bin.display().to_string()}),
            );
            Some(rate)
        }
        Err(why) => {
            rows.push(format!("{:<28}skipped: {why}", "websocat → websocat"));
            out.insert("websocat".into(), json!({"skipped": why}));
            None
        }
    };
    let vs_websocat = |rate: f64| match websocat {
        Some(w) => format!("{:>6.2}× websocat", rate / w),
        None => "  (no websocat)".to_string(),
    };
    let ratios = |rate: f64| json!({"ratio_to_websocat": websocat.map(|w| rate / w), "ratio_to_ceiling": rate / ceiling});

    for (name, json_flag) in [("send_to_tail_text", false), ("send_to_tail_json", true)] {
        let mut runs = Vec::new();
        let mut of_inbox = Vec::new();
        let mut detail = Vec::new();
        for run in 0..RUNS {
            let v = seen::send_to_tail(n, json_flag, &extra)
                .with_context(|| format!("{name} run {run}"))?;
            let r = v["msgs_per_s"].as_f64().unwrap_or(0.0);
            eprintln!(
                "  send → tail -f{} run {}: {r:.0} msgs/s ({:.2} of the inbox's rate)",
                if json_flag { " --json" } else { "" },
                run + 1,
                v["ratio_to_inbox"].as_f64().unwrap_or(0.0)
            );
            runs.push(r);
            of_inbox.push(v["ratio_to_inbox"].as_f64().unwrap_or(0.0));
            detail.push(v);
        }
        let rate = median(&mut runs.clone());
        let inbox = median(&mut of_inbox);
        rows.push(format!(
            "{:<28}{:>14.0} msgs/s {}  {:.3} of ceiling  {:.2} of inbox rate",
            if json_flag {
                "send → tail -f --json"
            } else {
                "send → tail -f"
            },
            rate,
            vs_websocat(rate),
            rate / ceiling,
            inbox
        ));
        let mut v = ratios(rate);
        v["msgs_per_s"] = json!(rate);
        v["runs_msgs_per_s"] = json!(runs);
        v["ratio_to_inbox"] = json!(inbox);
        v["runs"] = json!(detail);
        out.insert(name.into(), v);
    }

    let mut runs = Vec::new();
    for run in 0..RUNS {
        let r = seen::plain_client(rt, n, &extra).with_context(|| format!("plain run {run}"))?;
        eprintln!("  plain client run {}: {r:.0} msgs/s", run + 1);
        runs.push(r);
    }
    let rate = median(&mut runs.clone());
    rows.push(format!(
        "{:<28}{:>14.0} msgs/s {}  {:.3} of ceiling",
        "plain WebSocket client",
        rate,
        vs_websocat(rate),
        rate / ceiling
    ));
    let mut v = ratios(rate);
    v["msgs_per_s"] = json!(rate);
    v["runs_msgs_per_s"] = json!(runs);
    out.insert("plain_client".into(), v);

    let mut from = Vec::new();
    for run in 0..RUNS {
        let v = seen::tail_from(n, &extra).with_context(|| format!("tail --from run {run}"))?;
        eprintln!(
            "  tail --from 1 run {}: {:.0} lines/s, --json {:.0} lines/s",
            run + 1,
            v["text"]["lines_per_s"].as_f64().unwrap_or(0.0),
            v["json"]["lines_per_s"].as_f64().unwrap_or(0.0)
        );
        from.push(v);
    }
    let mut tail_from = serde_json::Map::new();
    for fmt in ["text", "json"] {
        let pick = |k: &str| {
            let mut v: Vec<f64> = from.iter().filter_map(|r| r[fmt][k].as_f64()).collect();
            (!v.is_empty()).then(|| median(&mut v))
        };
        let rate = pick("lines_per_s").unwrap_or(0.0);
        let cpu = |v: Option<f64>| v.map_or("not measured".into(), |s| format!("{s:.2} s"));
        rows.push(format!(
            "{:<28}{:>14.0} lines/s (peerctl CPU {}, peerd {})",
            format!(
                "tail --from 1 {}",
                if fmt == "json" { "--json" } else { "" }
            ),
            rate,
            cpu(pick("peerctl_cpu_s")),
            cpu(pick("peerd_cpu_s")),
        ));
        tail_from.insert(
            fmt.into(),
            json!({"lines_per_s": rate, "peerctl_cpu_s": pick("peerctl_cpu_s"),
                "peerd_cpu_s": pick("peerd_cpu_s")}),
        );
    }
    tail_from.insert("runs".into(), json!(from));
    out.insert("tail_from_1".into(), Value::Object(tail_from));

    for (name, json_flag) in [
        ("tail_client_only_text", false),
        ("tail_client_only_json", true),
    ] {
        let mut runs = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..RUNS {
            let (r, cpu) = seen::tail_client_only(rt, scratch, n, 1000, json_flag)
                .with_context(|| name.to_string())?;
            runs.push(r);
            cpus.extend(cpu);
        }
        let rate = median(&mut runs.clone());
        let cpu = (!cpus.is_empty()).then(|| median(&mut cpus));
        rows.push(format!(
            "{:<28}{:>14.0} lines/s (stand-in daemon; peerctl CPU {})",
            if json_flag {
                "tail client only --json"
            } else {
                "tail client only"
            },
            rate,
            cpu.map_or("not measured".into(), |s| format!("{s:.2} s"))
        ));
        out.insert(
            name.into(),
            json!({"lines_per_s": rate, "runs": runs, "peerctl_cpu_s": cpu, "batch": 1000}),
        );
    }
    Ok((rows, Value::Object(out)))
}

/// The `p` quantile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn human_size(b: usize) -> String {
    if b >= 1024 {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

/// Stream `n` messages of `size` bytes through `peerctl send` on a; time
/// until all are in b's inbox. Returns msgs/s and memory readings.
fn throughput(size: usize, n: u64) -> Result<(f64, Value)> {
    let pair = Pair::start(&extra_config())?;
    let file = message_file(pair.dir.path(), size, n)?;
    let idle = (pair.a.rss(), pair.b.rss());
    let start = Instant::now();
    let mut send = pair
        .a
        .ctl_cmd()
        .arg("send")
        .stdin(std::fs::File::open(&file)?)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut sent = false;
    let deadline = start + Duration::from_secs(600);
    loop {
        if let (false, Some(st)) = (sent, send.try_wait()?) {
            if !st.success() {
                bail!("peerctl send failed: {st}");
            }
            sent = true;
        }
        if sent && pair.b.inbox_next()? > n {
            break;
        }
        if Instant::now() > deadline {
            bail!("not delivered within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let peak = (pair.a.rss(), pair.b.rss());
    let mem = json!({
        "a_idle": idle.0.map(|r| r.0), "b_idle": idle.1.map(|r| r.0),
        "a_peak": peak.0.map(|r| r.1), "b_peak": peak.1.map(|r| r.1),
        "idle_max": idle.0.map(|r| r.0).max(idle.1.map(|r| r.0)),
        "peak_max": peak.0.map(|r| r.1).max(peak.1.map(|r| r.1)),
    });
    Ok((n as f64 / elapsed.as_secs_f64(), mem))
}

/// Offer `rate` 64-byte messages/s for `dur` through `peerctl send` on a;
/// `peerctl tail -f` on b stamps arrivals. Returns p50/p99/p99.9 in ms.
fn latency(rate: u64, dur: Duration) -> Result<(f64, f64, f64, usize)> {
    let pair = Pair::start(&extra_config())?;
    let mut tail = pair
        .b
        .ctl_cmd()
        .args(["tail", "-f", "--json", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = tail.stdout.take().context("tail stdout")?;
    let total = (rate as f64 * dur.as_secs_f64()) as usize;
    let (tx, rx) = std::sync::mpsc::channel::<Option<f64>>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let now = now_us();
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let sent: Option<u64> = v["body"]
                .as_str()
                .and_then(|b| b.split(' ').next())
                .and_then(|t| t.parse().ok());
            if tx
                .send(sent.map(|s| now.saturating_sub(s) as f64 / 1000.0))
                .is_err()
            {
                break;
            }
        }
    });
    // Wait until the follower is attached: a probe must come back.
    let attach = Instant::now();
    loop {
        pair.a.ctl(&["send", "probe"])?;
        if let Ok(None) = rx.recv_timeout(Duration::from_millis(500)) {
            break;
        }
        if attach.elapsed() > Duration::from_secs(20) {
            bail!("tail -f on b never showed the probe");
        }
    }
    daemons::paced_send(&pair.a, rate as f64, total)?;
    let mut lat = Vec::with_capacity(total);
    while lat.len() < total {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(ms)) => lat.push(ms),
            Ok(None) => {}
            Err(_) => break,
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    // The first 5% include the follower catching up; leave them out.
    let skip = lat.len() / 20;
    let mut lat: Vec<f64> = lat.drain(skip..).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999), lat.len()))
}

/// Queue `n` 64-byte messages on a while b is down, start b, time the drain.
fn backlog(n: u64) -> Result<Value> {
    let mut pair = Pair::start(&extra_config())?;
    pair.b.stop();
    let file = message_file(pair.dir.path(), 64, n)?;
    let t = Instant::now();
    let st = pair
        .a
        .ctl_cmd()
        .arg("send")
        .stdin(std::fs::File::open(&file)?)
        .status()?;
    if !st.success() {
        bail!("peerctl send of the backlog failed: {st}");
    }
    let queue_seconds = t.elapsed().as_secs_f64();
    let a_queued = pair.a.rss();
    // "Once b returns": from the moment b answers on its control socket
    // (its journal is open, its listener up); the process start before
    // that is not the link's doing.
    let spawned = Instant::now();
    pair.b.spawn()?;
    let start = Instant::now();
    let startup = (start - spawned).as_secs_f64();
    let deadline = start + Duration::from_secs(600);
    while pair.b.inbox_next()? <= n {
        if Instant::now() > deadline {
            bail!("backlog not drained within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain = start.elapsed().as_secs_f64();
    let peak = (pair.a.rss(), pair.b.rss());
    Ok(json!({
        "messages": n, "queue_seconds": queue_seconds, "drain_seconds": drain,
        "drain_msgs_per_s": n as f64 / drain, "b_startup_seconds": startup,
        "a_rss_with_backlog": a_queued.map(|r| r.0),
        "peak_max": peak.0.map(|r| r.1).max(peak.1.map(|r| r.1)),
    }))
}

/// Extra config keys for both daemons, from `$BENCH_CONFIG` (e.g.
/// `fsync = "never"` to see what durability costs). Empty by default: the
/// numbers that count are with the shipped defaults.
fn extra_config() -> String {
    std::env::var("BENCH_CONFIG").unwrap_or_default()
}
