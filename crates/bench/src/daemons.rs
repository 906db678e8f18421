//! Real `peerd` pairs for the benchmark: release binaries next to this one,
//! fresh loopback ports, temp dirs, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where `peerd` and `peerctl` are: beside this binary.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("binary dir")?;
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} not found: run `make bench` (it builds the release binaries)",
            p.display()
        );
    }
    Ok(p)
}

/// A free loopback port below the kernel's ephemeral range, so no
/// outgoing connection can take it between this check and the daemon's
/// bind (see tests/support/lib.rs `free_port`).
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 6_000;
    for _ in 0..12_000 {
        let port = 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    bail!("no free loopback port in 20000..32000")
}

/// One daemon of a pair.
pub struct Node {
    pub name: String,
    /// The loopback port it listens on (peers and plain clients).
    pub port: u16,
    pub socket: PathBuf,
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Daemons `a` and `b` linked to each other.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
}

impl Pair {
    /// Write configs (with `extra` keys) and start both; wait for the link.
    pub fn start(extra: &str) -> Result<Pair> {
        let dir = tempfile::Builder::new()
            .prefix("plbench")
            .tempdir_in("/tmp")?;
        let (pa, pb) = (free_port()?, free_port()?);
        let mut a = Node::new(dir.path(), "a", pa, &[("b", pb)], extra)?;
        let mut b = Node::new(dir.path(), "b", pb, &[("a", pa)], extra)?;
        a.spawn()?;
        b.spawn()?;
        let pair = Pair { a, b, dir };
        pair.a.wait_connected()?;
        pair.b.wait_connected()?;
        Ok(pair)
    }
}

impl Node {
    /// Node `name` in `dir` listening on `port`, linked to `peers` (name,
    /// port), with `extra` config keys; not started.
    pub fn new(
        dir: &Path,
        name: &str,
        port: u16,
        peers: &[(&str, u16)],
        extra: &str,
    ) -> Result<Node> {
        let config = dir.join(format!("{name}.toml"));
        let mut text = format!("listen = \"127.0.0.1:{port}\"\nbackoff_max = \"200ms\"\n{extra}\n");
        for (p, pp) in peers {
            text.push_str(&format!(
                "[[peer]]\nname = \"{p}\"\nurl = \"ws://127.0.0.1:{pp}/ws\"\n"
            ));
        }
        std::fs::write(&config, text)?;
        Ok(Node {
            name: name.into(),
            port,
            socket: dir.join(format!("{name}.sock")),
            config,
            state: dir.join(format!("{name}-state")),
            log: dir.join(format!("{name}.log")),
            child: None,
        })
    }

    /// The daemon's state directory (its journal is in `journal/`).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin("peerd")?)
            .arg(&self.name)
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .env("PEERD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.ctl(&["status", "--json"])?;
            if matches!(out.status.code(), Some(0 | 4)) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "peerd {} did not answer within 20s (peerctl: {}); log:\n{}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    std::fs::read_to_string(&self.log)?
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `peerctl --socket S ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Ok(self.ctl_cmd().args(args).output()?)
    }

    pub fn ctl_cmd(&self) -> Command {
        let mut c = Command::new(bin("peerctl").unwrap_or_else(|_| PathBuf::from("peerctl")));
        c.arg("--socket").arg(&self.socket);
        c
    }

    pub fn status(&self) -> Result<Value> {
        let out = self.ctl(&["status", "--json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ctl(&["status"])?.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: link did not come up", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next inbox sequence number (messages received + 1).
    pub fn inbox_next(&self) -> Result<u64> {
        let s = self.status()?;
        s["journal"]["inbox_next"]
            .as_u64()
            .context("status has journal.inbox_next")
    }

    /// Current and peak resident memory, in bytes (Linux /proc).
    pub fn rss(&self) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |k: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(k))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A file of `n` lines, each a `size`-byte message.
pub fn message_file(dir: &Path, size: usize, n: u64) -> Result<PathBuf> {
    use std::io::Write;
    let path = dir.join(format!("msgs-{size}-{n}"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut line = vec![b'x'; size];
    line.push(b'\n');
    for i in 0..n {
        let tag = format!("{i:012}");
        let k = tag.len().min(size);
        line[..k].copy_from_slice(&tag.as_bytes()[..k]);
        w.write_all(&line)?;
    }
    w.flush()?;
    Ok(path)
}

/// Microseconds since the Unix epoch: the stamp a latency probe carries.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Offer `total` 64-byte messages, each starting with its send time
/// ([`now_us`]), to `peerctl send` on `node` at `rate` per second.
pub fn paced_send(node: &Node, rate: f64, total: usize) -> Result<()> {
    use std::io::Write;
    let mut send = node.ctl_cmd().arg("send").stdin(Stdio::piped()).spawn()?;
    let mut stdin = send.stdin.take().context("send stdin")?;
    let start = Instant::now();
    let per_ms = rate / 1000.0;
    let mut written = 0usize;
    while written < total {
        let due = (start.elapsed().as_secs_f64() * 1000.0 * per_ms) as usize + 1;
        let mut buf = Vec::new();
        while written < due.min(total) {
            let mut line = format!("{} ", now_us());
            while line.len() < 64 {
                line.push('x');
            }
            line.push('\n');
            buf.extend_from_slice(line.as_bytes());
            written += 1;
        }
        if !buf.is_empty() {
            stdin.write_all(&buf)?;
            stdin.flush()?;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    drop(stdin);
    send.wait()?;
    Ok(())
}
