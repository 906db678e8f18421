//! What users see: messages counted as they come out of the programs a
//! user reads them with, not when they are durable in b's inbox.
//!
//! - `peerctl send` (stdin) on a → `peerctl tail -f` on b, text and
//!   `--json`, counted as lines leave tail's stdout; in the same run the
//!   time b's inbox held them all (so tail's rate is also a fraction of
//!   the rate the inbox fills);
//! - a plain WebSocket client (tokio-tungstenite, no subprotocol) on b's
//!   `/ws` while a sends;
//! - `peerctl tail --from 1` of 1M entries from an idle daemon;
//! - `peerctl tail` alone, fed pre-encoded batches by a stand-in daemon
//!   (this process), so the client's own rate shows apart from peerd's;
//! - websocat → websocat, the same lines, no durability, as a reference
//!   (installed with `cargo install` into `target/bench/tools` when not
//!   found; the row says why when it cannot be had).

use std::io::Read;
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::daemons::{Node, Pair, message_file};

/// A thread counting the lines `child` writes to stdout; it reports the
/// moment the count reaches `want` (or the count at EOF, as an error).
fn count_lines(child: &mut Child, want: u64) -> Result<mpsc::Receiver<Result<Instant, u64>>> {
    let mut out = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 18];
        let mut seen = 0u64;
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Err(seen));
                    return;
                }
                Ok(n) => n,
            };
            seen += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            if seen >= want {
                let _ = tx.send(Ok(Instant::now()));
                // Keep draining so the writer never blocks.
                while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
                return;
            }
        }
    });
    Ok(rx)
}

fn wait_count(rx: &mpsc::Receiver<Result<Instant, u64>>, what: &str) -> Result<Instant> {
    match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(seen)) => bail!("{what}: output ended after {seen} lines"),
        Err(_) => bail!("{what}: not all lines within 5 minutes"),
    }
}

/// User + system CPU seconds of a process, from /proc (USER_HZ = 100).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the line; `rest` starts at field 3.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Wait for `child` to exit; its CPU seconds, read while it is a zombie.
fn reap_with_cpu(child: &mut Child) -> Result<Option<f64>> {
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cpu = None;
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rfind(')')
            .and_then(|i| state.get(i + 2..i + 3))
            .is_none_or(|s| s == "Z" || s == "X");
        if zombie {
            cpu = cpu_seconds(pid);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("exited with {st}");
    }
    Ok(cpu)
}

/// Wait until b's inbox holds messages up to `last` and a has nothing
/// queued: both daemons idle.
fn wait_idle(pair: &Pair, last: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let queued = pair.a.status()?["peers"][0]["queued_msgs"]
            .as_u64()
            .unwrap_or(u64::MAX);
        if pair.b.inbox_next()? > last && queued == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not delivered within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `peerctl tail -f -n 0 ARGS` on `node`, attached (a probe sent from
/// `from` came out); returns it with its line counter armed for `n` more.
fn follower(
    node: &Node,
    from: &Node,
    args: &[&str],
    n: u64,
) -> Result<(Child, mpsc::Receiver<Result<Instant, u64>>)> {
    let mut tail = node
        .ctl_cmd()
        .args(["tail", "-f", "-n", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = tail.stdout.take().context("tail stdout")?;
    // Read the probe's line byte by byte, so nothing after it is eaten.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while matches!(out.read(&mut b), Ok(1)) {
            if b[0] == b'\n' {
                let _ = tx.send(out);
                return;
            }
        }
    });
    let attach = Instant::now();
    let out = loop {
        from.ctl(&["send", "probe"])?;
        if let Ok(out) = rx.recv_timeout(Duration::from_millis(500)) {
            break out;
        }
        if attach.elapsed() > Duration::from_secs(20) {
            bail!("tail -f never showed the probe");
        }
    };
    tail.stdout = Some(out);
    let counter = count_lines(&mut tail, n)?;
    Ok((tail, counter))
}

/// send (stdin) on a → `tail -f` on b: lines/s out of tail, and the rate
/// b's inbox filled in the same run.
pub fn send_to_tail(n: u64, json: bool, extra: &str) -> Result<Value> {
    let pair = Pair::start(extra)?;
    let file = message_file(pair.dir.path(), 64, n)?;
    let args: &[&str] = if json { &["--json"] } else { &[] };
    let (mut tail, counter) = follower(&pair.b, &pair.a, args, n)?;
    let first = pair.b.inbox_next()?;
    let start = Instant::now();
    let mut send = pair
        .a
        .ctl_cmd()
        .arg("send")
        .stdin(std::fs::File::open(&file)?)
        .spawn()?;
    let deadline = start + Duration::from_secs(600);
    let inbox_at = loop {
        if pair.b.inbox_next()? >= first + n {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("not in b's inbox within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let tail_at = wait_count(&counter, "tail -f")?;
    if !send.wait()?.success() {
        bail!("peerctl send failed");
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let tail_rate = n as f64 / (tail_at - start).as_secs_f64();
    let inbox_rate = n as f64 / (inbox_at - start).as_secs_f64();
    Ok(
        json!({"msgs_per_s": tail_rate, "inbox_msgs_per_s": inbox_rate,
        "ratio_to_inbox": tail_rate / inbox_rate}),
    )
}

/// A plain WebSocket client on b's `/ws` while a sends `n` messages.
pub fn plain_client(rt: &tokio::runtime::Runtime, n: u64, extra: &str) -> Result<f64> {
    let pair = Pair::start(extra)?;
    let file = message_file(pair.dir.path(), 64, n)?;
    let url = format!("ws://127.0.0.1:{}/ws", pair.b.port);
    let (ws, _) = rt
        .block_on(tokio_tungstenite::connect_async(url))
        .context("plain client connect")?;
    let (_sink, mut stream) = ws.split();
    // Attached once a probe comes through.
    let probe = Instant::now();
    loop {
        pair.a.ctl(&["send", "probe"])?;
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(500), stream.next()).await
        });
        match got {
            Ok(Some(Ok(_))) => break,
            Ok(Some(Err(e))) => bail!("plain client: {e}"),
            Ok(None) => bail!("plain client: closed"),
            Err(_) if probe.elapsed() > Duration::from_secs(20) => {
                bail!("plain client never got the probe")
            }
            Err(_) => {}
        }
    }
    let counted = rt.spawn(async move {
        let mut got = 0u64;
        while got < n {
            match stream.next().await {
                Some(Ok(Message::Text(_) | Message::Binary(_))) => got += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => bail!("closed after {got} messages"),
            }
        }
        Ok(Instant::now())
    });
    let start = Instant::now();
    let st = pair
        .a
        .ctl_cmd()
        .arg("send")
        .stdin(std::fs::File::open(&file)?)
        .status()?;
    if !st.success() {
        bail!("peerctl send failed: {st}");
    }
    let end = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(300), counted).await })
        .context("plain client: not all messages within 5 minutes")???;
    Ok(n as f64 / (end - start).as_secs_f64())
}

/// `tail --from 1` of `n` entries from an idle daemon, text and `--json`:
/// lines/s, and the CPU seconds of peerctl and of b.
pub fn tail_from(n: u64, extra: &str) -> Result<Value> {
    let pair = Pair::start(extra)?;
    let file = message_file(pair.dir.path(), 64, n)?;
    let st = pair
        .a
        .ctl_cmd()
        .arg("send")
        .stdin(std::fs::File::open(&file)?)
        .status()?;
    if !st.success() {
        bail!("peerctl send failed: {st}");
    }
    wait_idle(&pair, n)?;
    let mut out = serde_json::Map::new();
    for (name, args) in [("text", &[][..]), ("json", &["--json"][..])] {
        let b_cpu = pair.b.pid().and_then(cpu_seconds);
        let start = Instant::now();
        let mut tail = pair
            .b
            .ctl_cmd()
            .args(["tail", "--from", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let counter = count_lines(&mut tail, n)?;
        let end = wait_count(&counter, "tail --from 1")?;
        let cpu = reap_with_cpu(&mut tail).context("peerctl tail")?;
        let b_cpu = b_cpu
            .zip(pair.b.pid().and_then(cpu_seconds))
            .map(|(a, b)| b - a);
        out.insert(
            name.into(),
            json!({"lines_per_s": n as f64 / (end - start).as_secs_f64(),
                "seconds": (end - start).as_secs_f64(),
                "peerctl_cpu_s": cpu, "peerd_cpu_s": b_cpu}),
        );
    }
    Ok(Value::Object(out))
}

/// `peerctl tail --from 1` against this process standing in for peerd,
/// serving `n` pre-encoded 64-byte entries in batches of `batch`: the
/// client's own rate. Returns lines/s and peerctl's CPU seconds.
pub fn tail_client_only(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    n: u64,
    batch: u64,
    json: bool,
) -> Result<(f64, Option<f64>)> {
    use peerlink::control::{Entry, PROTOCOL_VERSION, Request, Response};
    // Everything the stand-in will send after the Hello, framed.
    let mut frames = Vec::new();
    let mut push = |r: &Response| -> Result<()> {
        let bytes = peerlink::codec::encode(r)?;
        frames.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        frames.extend_from_slice(&bytes);
        Ok(())
    };
    let base = 1_764_000_000_000u64;
    let mut seq = 1;
    while seq <= n {
        let entries = (seq..(seq + batch).min(n + 1))
            .map(|s| Entry {
                seq: s,
                // About 2,000 messages per ms, as at 2M/s.
                received_ms: base + s / 2000,
                sent_ms: base + s / 2000,
                origin: "a".into(),
                origin_seq: s,
                body: format!("{s:012}{}", "x".repeat(52)).into_bytes(),
            })
            .collect();
        push(&Response::Entries(entries))?;
        seq += batch;
    }
    push(&Response::CaughtUp { next: n + 1 })?;
    let socket = dir.join("standin.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket) })?;
    let server = rt.spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (stream, _) = listener.accept().await?;
        let (rx, mut tx) = stream.into_split();
        let mut reader = peerlink::frame::reader(rx, peerlink::control::MAX_FRAME);
        let hello: Option<Request> = peerlink::frame::recv(&mut reader).await?;
        anyhow::ensure!(matches!(hello, Some(Request::Hello { .. })), "no Hello");
        let mut hello = Vec::new();
        let bytes = peerlink::codec::encode(&Response::Hello {
            version: PROTOCOL_VERSION,
            daemon_version: "bench stand-in".into(),
            instance: "standin".into(),
            max_message: 1 << 20,
        })?;
        hello.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        hello.extend_from_slice(&bytes);
        tx.write_all(&hello).await?;
        let tail: Option<Request> = peerlink::frame::recv(&mut reader).await?;
        anyhow::ensure!(matches!(tail, Some(Request::Tail { .. })), "no Tail");
        tx.write_all(&frames).await?;
        // Hold the connection until the client leaves.
        let _ = peerlink::frame::recv::<Request, _>(&mut reader).await;
        anyhow::Ok(())
    });
    let start = Instant::now();
    let mut cmd = Command::new(crate::daemons::bin("peerctl")?);
    cmd.arg("--socket")
        .arg(&socket)
        .args(["tail", "--from", "1"]);
    if json {
        cmd.arg("--json");
    }
    let mut tail = cmd.stdout(Stdio::piped()).spawn()?;
    let counter = count_lines(&mut tail, n)?;
    let end = wait_count(&counter, "tail against the stand-in")?;
    let cpu = reap_with_cpu(&mut tail).context("peerctl tail")?;
    rt.block_on(server).context("stand-in")??;
    Ok((n as f64 / (end - start).as_secs_f64(), cpu))
}

/// The websocat binary: `$WEBSOCAT`, one installed before in
/// `target/bench/tools`, one on `PATH`, or one installed now with
/// `cargo install` (a few minutes, once). `Err` says why there is none.
pub fn websocat() -> std::result::Result<PathBuf, String> {
    if let Ok(p) = std::env::var("WEBSOCAT") {
        return Ok(PathBuf::from(p));
    }
    let root = PathBuf::from("target/bench/tools");
    let local = root.join("bin/websocat");
    if local.exists() {
        return Ok(local);
    }
    if let Ok(out) = Command::new("websocat").arg("--version").output()
        && out.status.success()
    {
        return Ok(PathBuf::from("websocat"));
    }
    eprintln!(
        "  installing websocat into {} (cargo install, once; log in target/bench/websocat-install.log)",
        root.display()
    );
    let log =
        std::fs::File::create("target/bench/websocat-install.log").map_err(|e| e.to_string())?;
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // Not `--locked`: websocat 1.14's lock file pins a `traitobject`
        // that current rustc refuses; the newer compatible one builds.
        .args([
            "install",
            "--no-default-features",
            "websocat@1.14.0",
            "--root",
        ])
        .arg(&root)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if st.success() && local.exists() {
        Ok(local)
    } else {
        Err(format!(
            "`cargo install websocat` failed ({st}); see target/bench/websocat-install.log"
        ))
    }
}

/// websocat client (stdin lines) → websocat server (stdout lines) on
/// loopback: lines/s counted at the server's stdout.
pub fn websocat_pair(bin: &Path, dir: &Path, n: u64) -> Result<f64> {
    let file = message_file(dir, 64, n)?;
    let port = crate::daemons::free_port()?;
    let mut server = Command::new(bin)
        .args(["-s", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let counter = count_lines(&mut server, n)?;
    let up = Instant::now();
    while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
        if up.elapsed() > Duration::from_secs(20) {
            let _ = server.kill();
            bail!("websocat server did not listen");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    let mut client = Command::new(bin)
        .arg(format!("ws://127.0.0.1:{port}/"))
        .stdin(std::fs::File::open(&file)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let end = wait_count(&counter, "websocat server");
    let _ = client.kill();
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    Ok(n as f64 / (end? - start).as_secs_f64())
}
