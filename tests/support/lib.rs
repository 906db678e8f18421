//! Fixtures for the end-to-end tests: real `peerd` processes on loopback
//! ports with temp dirs, driven by the real `peerctl`.
//!
//! - The binaries are built by `cargo build` the first time a test asks for
//!   them (in the same target dir and profile as the test itself), so the
//!   tests never run a stale binary, whichever way they were started.
//! - Each [`Daemon`] owns its process: unique temp dir, `PEERD_*` removed
//!   from the environment, log captured to a file, killed and reaped on
//!   drop. When a wait fails, the logs of the daemons involved are printed.
//! - Nothing sleeps a fixed time: [`wait_until`] polls a condition until a
//!   deadline.

pub mod browser;
pub mod http;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// Exit codes of peerctl (README "Exit status").
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_DOWN: i32 = 4;
pub const EXIT_LOST: i32 = 5;

struct Bins {
    peerd: PathBuf,
    peerctl: PathBuf,
}

fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        // The test binary lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile name");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            // The whole workspace, as `make build` does: building a subset
            // resolves dependency features differently, and the two would
            // rebuild peerd and peerctl each time they alternate.
            .args(["build", "--quiet", "--workspace", "--bins", "--target-dir"])
            .arg(target_dir);
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        strip_cargo_env(&mut cmd);
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of peerd and peerctl failed");
        let ext = std::env::consts::EXE_SUFFIX;
        Bins {
            peerd: profile_dir.join(format!("peerd{ext}")),
            peerctl: profile_dir.join(format!("peerctl{ext}")),
        }
    })
}

/// Remove what cargo set for this test's own crate from `cmd`'s
/// environment: passed on to cargo (directly or through `make`) it would
/// reach build scripts (ring reruns when CARGO_MANIFEST_DIR changes) and
/// make that build and a plain `cargo build` rebuild each other's output.
pub fn strip_cargo_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
}

/// Where the calling test runs, after [`private_namespaces`].
#[derive(Debug)]
pub enum Isolation {
    /// In private mount and network namespaces: `/run` is an empty tmpfs
    /// and loopback is this test's own, so default ports and sockets
    /// (8080, `/run/peerd/a`) are free and meet nothing outside. Go on.
    Inside,
    /// This was the outer run: the test ran inside and passed. Stop.
    Done,
    /// Namespaces are not available (not root, or no `unshare`): why.
    Unavailable(String),
}

/// Run test `name` (its full path, e.g. `instances::demo_...`) again in
/// private namespaces, so it may use the default ports and runtime paths
/// while other tests and the machine's own daemons carry on beside it.
/// The outer run asserts that the inner one passed.
pub fn private_namespaces(name: &str) -> Isolation {
    const INSIDE: &str = "PEERLINK_TEST_IN_NAMESPACES";
    if std::env::var_os(INSIDE).is_some() {
        let mount = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs", "/run"])
            .status();
        let lo = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(
            mount.is_ok_and(|s| s.success()) && lo.is_ok_and(|s| s.success()),
            "cannot set up the private namespaces"
        );
        return Isolation::Inside;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Isolation::Unavailable("not root (private namespaces need root)".into());
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--net", "--fork", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Isolation::Unavailable("`unshare --mount --net` does not work here".into());
    }
    // Build the binaries out here (the inner run finds them fresh).
    let _ = peerd_bin();
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--fork", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "in private namespaces:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the test did not run inside: {text}"
    );
    print!("{text}");
    Isolation::Done
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Path of the freshly built `peerd`.
pub fn peerd_bin() -> &'static Path {
    &bins().peerd
}

/// Path of the freshly built `peerctl`.
pub fn peerctl_bin() -> &'static Path {
    &bins().peerctl
}

/// A loopback port that was free a moment ago, for a daemon to listen on.
///
/// Taken from below the kernel's ephemeral range (Linux: 32768 and up), not
/// from it: a port the kernel handed out for `bind(:0)` can be handed out
/// again as the local port of some outgoing connection (a daemon dialling
/// its peer) before the daemon binds it. Ports below that range are only
/// ever used when asked for by number; each is handed out once per test
/// process, starting at a random place so parallel runs rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new(rand::random::<u16>() % SPAN));
    for _ in 0..SPAN {
        let port = LOW + next.fetch_add(1, Ordering::Relaxed) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// Poll `cond` until it holds or `timeout` passes; panics with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Fast timers so tests see reconnects and failures quickly.
pub const FAST_TIMERS: &str = r#"
heartbeat = "200ms"
dead_after = "2s"
handshake_timeout = "2s"
backoff_min = "20ms"
backoff_max = "300ms"
"#;

/// A temp dir holding the files of a set of daemons.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        // Short paths: Unix socket paths must stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("pl")
            .tempdir_in("/tmp")
            .expect("temp dir");
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Config text for node `name` listening on `port` with `peers`
    /// (name, port), plus `extra` keys.
    pub fn config(name: &str, port: u16, peers: &[(&str, u16)], extra: &str) -> String {
        Self::config_timers(name, port, peers, FAST_TIMERS, extra)
    }

    /// [`Sandbox::config`] with other `timers` than [`FAST_TIMERS`].
    pub fn config_timers(
        name: &str,
        port: u16,
        peers: &[(&str, u16)],
        timers: &str,
        extra: &str,
    ) -> String {
        let mut s = format!("listen = \"127.0.0.1:{port}\"\n{timers}\n{extra}\n");
        for (p, port) in peers {
            s.push_str(&format!(
                "[[peer]]\nname = \"{p}\"\nurl = \"ws://127.0.0.1:{port}/ws\"\n"
            ));
        }
        let _ = name;
        s
    }

    /// Files of daemon `name` in this sandbox.
    pub fn spec(&self, name: &str, config: &str) -> Spec {
        let dir = self.path();
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).expect("write config");
        Spec {
            name: name.to_string(),
            config: cfg,
            socket: dir.join(format!("{name}.sock")),
            state: dir.join(format!("{name}-state")),
            log: dir.join(format!("{name}.log")),
        }
    }
}

/// Where a daemon keeps its files.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
}

/// A running `peerd`, killed on drop.
pub struct Daemon {
    pub spec: Spec,
    child: Option<Child>,
}

impl Spec {
    /// `NAME --config FILE --socket PATH --state-dir DIR`: how every test
    /// starts this daemon.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        vec![
            self.name.clone().into(),
            "--config".into(),
            self.config.clone().into(),
            "--socket".into(),
            self.socket.clone().into(),
            "--state-dir".into(),
            self.state.clone().into(),
        ]
    }

    /// `peerctl` pointed at this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_cmd(&self.socket)
            .args(args)
            .output()
            .expect("run peerctl")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `peerctl --socket SOCKET` with a clean environment.
pub fn ctl_cmd(socket: &Path) -> Command {
    let mut c = Command::new(peerctl_bin());
    c.arg("--socket").arg(socket);
    prune_env(&mut c);
    c
}

/// Remove `PEERD_*` and service-manager variables from `c`'s environment.
pub fn prune_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("PEERD_")
            || k == "NOTIFY_SOCKET"
            || k == "WATCHDOG_USEC"
            || k == "WATCHDOG_PID"
            || k == "RUNTIME_DIRECTORY"
            || k == "STATE_DIRECTORY"
        {
            c.env_remove(&k);
        }
    }
}

impl Daemon {
    /// Start `peerd` and wait until its control socket answers.
    pub fn start(spec: &Spec) -> Daemon {
        let mut d = Self::spawn(spec, &[]);
        d.wait_ready();
        d
    }

    /// Start `peerd` with extra arguments, without waiting.
    pub fn spawn(spec: &Spec, extra: &[&str]) -> Daemon {
        Self::spawn_env(spec, extra, &[])
    }

    /// Start `peerd` with extra arguments and environment variables (set
    /// after the pruning, so e.g. `NOTIFY_SOCKET` can be given), without
    /// waiting.
    pub fn spawn_env(spec: &Spec, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .expect("open log");
        let mut c = Command::new(peerd_bin());
        c.args(spec.args())
            .args(extra)
            .env("PEERD_LOG", "info,peerd=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        prune_env(&mut c);
        c.envs(env.iter().copied());
        let child = c.spawn().expect("spawn peerd");
        Daemon {
            spec: spec.clone(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Wait until `peerctl status` answers (exit 0 or "link down").
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "peerd {} exited during start ({st}); log:\n{}",
                    self.spec.name,
                    self.spec.log()
                );
            }
            let out = self.spec.ctl(&["status", "--json"]);
            if matches!(out.status.code(), Some(0 | EXIT_DOWN | EXIT_LOST)) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "peerd {} not ready in 20s; log:\n{}",
                    self.spec.name,
                    self.spec.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `peerctl status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.spec.ctl(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status of {} is not JSON ({e}): {}{}",
                self.spec.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The status record of peer `name`.
    pub fn peer(&self, name: &str) -> Value {
        self.status()["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// Send messages as arguments; panics unless peerctl succeeds.
    pub fn send(&self, msgs: &[&str]) {
        let mut args = vec!["send"];
        args.extend_from_slice(msgs);
        let out = self.spec.ctl(&args);
        assert!(
            out.status.success(),
            "send failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Send each line of `input` through stdin.
    pub fn send_stdin(&self, input: &str) -> Output {
        use std::io::Write;
        let mut child = ctl_cmd(&self.spec.socket)
            .arg("send")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peerctl send");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("peerctl send");
        let _ = writer.join();
        out
    }

    /// The whole inbox, as `tail --json` lines.
    pub fn inbox(&self) -> Vec<Value> {
        let out = self.spec.ctl(&["tail", "--from", "1", "--json"]);
        assert!(
            out.status.success(),
            "tail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("tail --json line"))
            .collect()
    }

    /// Bodies of the inbox, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.inbox()
            .iter()
            .map(|e| e["body"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Wait until the link to `peer` is connected.
    pub fn wait_connected(&self, peer: &str) {
        self.wait(
            Duration::from_secs(20),
            &format!("{} connected to {peer}", self.spec.name),
            |d| d.peer(peer)["state"] == "connected",
        );
    }

    /// Wait for a condition on this daemon; prints the log on failure.
    pub fn wait(&self, timeout: Duration, what: &str, mut cond: impl FnMut(&Daemon) -> bool) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(timeout, what, || cond(self))
        }));
        if let Err(e) = r {
            eprintln!("--- log of {} ---\n{}", self.spec.name, self.spec.log());
            std::panic::resume_unwind(e);
        }
    }

    /// Send a signal (Unix) to the daemon.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "peerd {} did not exit within {timeout:?}; log:\n{}",
                    self.spec.name,
                    self.spec.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two daemons `a` and `b` linked to each other on fresh ports.
pub struct Pair {
    pub sandbox: Sandbox,
    pub a: Spec,
    pub b: Spec,
    pub a_port: u16,
    pub b_port: u16,
}

impl Pair {
    /// Write the configs of a and b (with `extra` keys for both).
    pub fn new(extra: &str) -> Pair {
        Self::new_timers(FAST_TIMERS, extra)
    }

    /// [`Pair::new`] with other `timers` than [`FAST_TIMERS`].
    pub fn new_timers(timers: &str, extra: &str) -> Pair {
        let sandbox = Sandbox::new();
        let (a_port, b_port) = (free_port(), free_port());
        let a = Sandbox::config_timers("a", a_port, &[("b", b_port)], timers, extra);
        let b = Sandbox::config_timers("b", b_port, &[("a", a_port)], timers, extra);
        let (a, b) = (sandbox.spec("a", &a), sandbox.spec("b", &b));
        Pair {
            sandbox,
            a,
            b,
            a_port,
            b_port,
        }
    }

    /// Start both and wait until each sees the other connected.
    pub fn start_linked(&self) -> (Daemon, Daemon) {
        let a = Daemon::start(&self.a);
        let b = Daemon::start(&self.b);
        a.wait_connected("b");
        b.wait_connected("a");
        (a, b)
    }
}

/// A `peerctl tail -f --json` running in the background; lines arrive on a
/// channel so the test can wait on them with a deadline.
pub struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    pub fn start(spec: &Spec, args: &[&str]) -> Follower {
        let mut child = ctl_cmd(&spec.socket)
            .args(["tail", "-f", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn peerctl tail -f");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines: rx }
    }

    /// The next line, parsed, or None after `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Value> {
        self.lines
            .recv_timeout(timeout)
            .ok()
            .map(|l| serde_json::from_str(&l).expect("tail --json line"))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`PlainClient`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainEvent {
    Text(String),
    Binary(Vec<u8>),
    /// The daemon closed the connection: code and reason, if it gave them.
    Close(Option<(u16, String)>),
    Error(String),
}

/// A plain WebSocket client (no `peerlink.v1` subprotocol), like websocat
/// or a browser, on its own runtime so it keeps answering pings while the
/// test blocks.
pub struct PlainClient {
    /// Our end of the TCP connection: the daemon names us `client:<local>`.
    pub local: std::net::SocketAddr,
    out: tokio::sync::mpsc::UnboundedSender<tokio_tungstenite::tungstenite::Message>,
    events: mpsc::Receiver<PlainEvent>,
    _rt: tokio::runtime::Runtime,
}

impl PlainClient {
    /// Connect to `ws://127.0.0.1:<port>/ws` without a subprotocol.
    pub fn connect(port: u16) -> PlainClient {
        Self::connect_with(port, &[])
    }

    /// Connect with extra request headers (e.g. a browser's `Origin`).
    pub fn connect_with(port: u16, headers: &[(&'static str, &str)]) -> PlainClient {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (ws, local) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect to peerd");
            let local = tcp.local_addr().expect("local addr");
            let mut request = format!("ws://127.0.0.1:{port}/ws")
                .into_client_request()
                .expect("request");
            for (k, v) in headers {
                request
                    .headers_mut()
                    .insert(*k, HeaderValue::from_str(v).expect("header value"));
            }
            // Messages up to the largest max_message arrive whole, as one
            // frame: take them (tungstenite's defaults stop at 16 MiB frames).
            let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(80 << 20))
                .max_frame_size(Some(80 << 20));
            let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(limits))
                .await
                .expect("plain WebSocket upgrade");
            (ws, local)
        });
        let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (ev_tx, events) = mpsc::channel();
        rt.spawn(async move {
            let (mut sink, mut stream) = ws.split();
            loop {
                tokio::select! {
                    m = out_rx.recv() => match m {
                        Some(m) => { let _ = sink.send(m).await; }
                        None => return,
                    },
                    m = stream.next() => {
                        let ev = match m {
                            Some(Ok(Message::Text(t))) => PlainEvent::Text(t.to_string()),
                            Some(Ok(Message::Binary(b))) => PlainEvent::Binary(b.to_vec()),
                            Some(Ok(Message::Close(f))) => PlainEvent::Close(
                                f.map(|f| (u16::from(f.code), f.reason.to_string())),
                            ),
                            Some(Ok(_)) => continue,
                            Some(Err(e)) => PlainEvent::Error(e.to_string()),
                            None => PlainEvent::Error("connection ended".into()),
                        };
                        let end = !matches!(ev, PlainEvent::Text(_) | PlainEvent::Binary(_));
                        if ev_tx.send(ev).is_err() || end {
                            return;
                        }
                    }
                }
            }
        });
        PlainClient {
            local,
            out,
            events,
            _rt: rt,
        }
    }

    /// Send one text message.
    pub fn send_text(&self, text: &str) {
        let _ = self
            .out
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()));
    }

    /// Start the closing handshake (code 1000).
    pub fn close(&self) {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        let _ = self
            .out
            .send(tokio_tungstenite::tungstenite::Message::Close(Some(
                CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                },
            )));
    }

    /// The next thing the daemon sent, or None after `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<PlainEvent> {
        self.events.recv_timeout(timeout).ok()
    }
}

/// A fenced block of README.md.
#[derive(Debug, Clone)]
pub struct ReadmeBlock {
    /// From a `<!-- transcript: NAME -->` line just before the fence.
    pub name: Option<String>,
    /// Index (0-based) of the block's first line after the opening fence.
    pub line: usize,
    /// Its lines, with the fence's indentation removed.
    pub body: Vec<String>,
}

/// The fenced blocks of a README, with their transcript names.
pub fn readme_blocks(text: &str) -> Vec<ReadmeBlock> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("<!-- transcript:") {
            name = rest
                .trim_end_matches("-->")
                .split_whitespace()
                .next()
                .map(str::to_string);
        } else if trimmed.starts_with("```") {
            let indent = line.len() - trimmed.len();
            let start = i + 1;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                let l = lines[i];
                body.push(l.get(indent.min(l.len())..).unwrap_or("").to_string());
                i += 1;
            }
            out.push(ReadmeBlock {
                name: name.take(),
                line: start,
                body,
            });
        } else if !trimmed.is_empty() {
            name = None;
        }
        i += 1;
    }
    out
}

/// The body of README.md's transcript `name` (checked by the calling
/// test rather than by tests/e2e/readme.rs).
pub fn readme_block(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    readme_blocks(&text)
        .into_iter()
        .find(|b| b.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("README.md has no transcript {name:?}"))
        .body
}

/// Copy a directory tree (a backup of a stopped daemon's state, or a
/// committed fixture).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}
