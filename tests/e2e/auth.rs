//! Peer authentication: only a node that knows the secret gets in. Wrong
//! and missing secrets and a replayed handshake are refused and logged,
//! the inbox never sees their messages, and the good link stays as it was.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerlink_e2e::{Daemon, Sandbox, Value, free_port, peerd_bin};

const LONG: Duration = Duration::from_secs(20);
pub const SECRET: &str = "correct horse battery staple 42";

/// `secret = ...` for a config.
pub fn secret_line(secret: &str) -> String {
    format!("secret = \"{secret}\"\n")
}

/// The parts of a's session as b sees it that change if it is replaced.
fn session_of(d: &Daemon, peer: &str) -> (Value, Value, Value, Value) {
    let p = d.peer(peer);
    (
        p["state"].clone(),
        p["remote_addr"].clone(),
        p["local_addr"].clone(),
        p["reconnects"].clone(),
    )
}

/// A log line of `d` that contains every one of `needles`.
fn log_has_line(d: &Daemon, needles: &[&str]) -> bool {
    d.spec
        .log()
        .lines()
        .any(|l| needles.iter().all(|n| l.contains(n)))
}

#[test]
fn wrong_and_missing_secrets_are_refused_and_the_good_link_stays_up() {
    let sb = Sandbox::new();
    let (a_port, b_port) = (free_port(), free_port());
    // b reads its secret from a private file; a has it inline.
    let secret_file = sb.path().join("b.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    set_mode(&secret_file, 0o600);
    let a = sb.spec(
        "a",
        &Sandbox::config("a", a_port, &[("b", b_port)], &secret_line(SECRET)),
    );
    let b = sb.spec(
        "b",
        &Sandbox::config(
            "b",
            b_port,
            &[("a", a_port)],
            &format!("secret_file = \"{}\"\n", secret_file.display()),
        ),
    );
    let a = Daemon::start(&a);
    let b = Daemon::start(&b);
    a.wait_connected("b");
    b.wait_connected("a");
    a.send(&["good 1"]);
    b.wait(LONG, "b has a's first message", |b| {
        b.bodies() == ["good 1"]
    });
    let before = session_of(&b, "a");

    // Two intruders claim to be node a: one with a wrong secret, one
    // with none. Each has a message queued for b.
    let wrong = sb.spec(
        "x",
        &format!(
            "node = \"a\"\n{}",
            Sandbox::config(
                "x",
                free_port(),
                &[("b", b_port)],
                &secret_line("a wrong secret, long enough")
            )
        ),
    );
    let missing = sb.spec(
        "y",
        &format!(
            "node = \"a\"\n{}",
            Sandbox::config("y", free_port(), &[("b", b_port)], "")
        ),
    );
    let wrong = Daemon::start(&wrong);
    let missing = Daemon::start(&missing);
    wrong.send(&["evil: wrong secret"]);
    missing.send(&["evil: no secret"]);

    b.wait(LONG, "b refuses the wrong proof, with the address", |b| {
        log_has_line(
            b,
            &[
                "WARN",
                "authentication failed",
                "wrong secret? no secret in common with peer \"a\"",
                "remote=127.0.0.1:",
            ],
        )
    });
    b.wait(
        LONG,
        "b refuses the missing secret, with the address",
        |b| {
            log_has_line(
                b,
                &[
                    "WARN",
                    "authentication failed",
                    "has no secret",
                    "remote=127.0.0.1:",
                ],
            )
        },
    );
    wrong.wait(LONG, "the wrong-secret side says why", |d| {
        log_has_line(d, &["WARN", "authentication failed", "wrong secret"])
    });
    missing.wait(LONG, "the secret-less side says why", |d| {
        log_has_line(d, &["WARN", "b requires authentication"])
    });
    // Each failure is one line per attempt, not several.
    let per_attempt = b
        .spec
        .log()
        .lines()
        .filter(|l| l.contains("no secret in common"))
        .count();
    assert!(per_attempt >= 1);
    for d in [&wrong, &missing] {
        assert_ne!(d.peer("b")["state"], "connected", "{}", d.spec.name);
    }

    // Nothing of theirs arrived, the good session is the same one, and it
    // still carries messages.
    assert_eq!(b.bodies(), ["good 1"]);
    assert_eq!(session_of(&b, "a"), before, "the good link was replaced");
    a.send(&["good 2"]);
    b.wait(LONG, "the good link still delivers", |b| {
        b.bodies() == ["good 1", "good 2"]
    });
    assert_eq!(session_of(&b, "a"), before);
}

#[test]
fn a_replayed_handshake_is_refused() {
    let sb = Sandbox::new();
    let (a_port, b_port) = (free_port(), free_port());
    // a reaches b through a recording proxy, like an eavesdropper on the
    // path would see it.
    let proxy = Proxy::start(b_port);
    let a_cfg = format!(
        "{}[[peer]]\nname = \"b\"\nurl = \"ws://127.0.0.1:{}/ws\"\n",
        Sandbox::config("a", a_port, &[], &secret_line(SECRET)),
        proxy.port
    );
    let a = sb.spec("a", &a_cfg);
    // b's own dials go nowhere, so the one session is a's, via the proxy.
    let b = sb.spec(
        "b",
        &Sandbox::config("b", b_port, &[("a", free_port())], &secret_line(SECRET)),
    );
    let b = Daemon::start(&b);
    let a = Daemon::start(&a);
    a.wait_connected("b");
    b.wait_connected("a");
    a.send(&["one"]);
    b.wait(LONG, "b has a's message", |b| b.bodies() == ["one"]);
    let before = session_of(&b, "a");

    // a's first dial went through the proxy (b was already up): a
    // complete, successful handshake, then the message.
    let recorded = proxy.first_connection();
    assert!(
        recorded.windows(4).any(|w| w == b"\r\n\r\n") && recorded.len() > 200,
        "recorded a's handshake ({} bytes)",
        recorded.len()
    );

    // Replay it, byte for byte, straight to b: the upgrade request, then
    // (once b has answered it, as a client must wait) the frames.
    let head_end = recorded
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(recorded.len());
    let mut replay = TcpStream::connect(("127.0.0.1", b_port)).expect("connect to b");
    let port = replay.local_addr().expect("local addr").port();
    replay.write_all(&recorded[..head_end]).expect("replay");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") && replay.read_exact(&mut byte).is_ok() {
        answer.push(byte[0]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "b upgrades the replayed request: {}",
        String::from_utf8_lossy(&answer)
    );
    let _ = replay.write_all(&recorded[head_end..]);
    let _ = replay.shutdown(Shutdown::Write);
    assert!(
        closed_within(&mut replay, LONG),
        "b closes the replayed connection"
    );
    let remote = format!("remote=127.0.0.1:{port}");
    b.wait(
        LONG,
        "b logs the replay as an authentication failure",
        |b| log_has_line(b, &["WARN", "authentication failed", &remote]),
    );

    assert_eq!(b.bodies(), ["one"], "inbox unchanged");
    assert_eq!(session_of(&b, "a"), before, "the good link was replaced");
    a.send(&["two"]);
    b.wait(LONG, "the good link still delivers", |b| {
        b.bodies() == ["one", "two"]
    });
}

#[test]
fn check_config_masks_the_secret_and_refuses_weak_setups() {
    let sb = Sandbox::new();
    let cfg = sb.path().join("s.toml");
    let check = |text: &str| {
        std::fs::write(&cfg, text).expect("write config");
        Command::new(peerd_bin())
            .args(["check-config", "s", "--config"])
            .arg(&cfg)
            .output()
            .expect("peerd check-config")
    };
    let base = "listen = \"127.0.0.1:9\"\n[[peer]]\nname = \"t\"\nurl = \"ws://127.0.0.1:10/ws\"\n";

    let out = check(&format!("{}{base}", secret_line(SECRET)));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("secret = \"<masked>\""), "{text}");
    assert!(!text.contains("horse"), "the secret is shown: {text}");

    // A secret file others can read is refused, saying how to fix it.
    let secret_file = sb.path().join("s.secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    set_mode(&secret_file, 0o644);
    let out = check(&format!("secret_file = \"s.secret\"\n{base}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("chmod 600") && err.contains("s.secret"),
        "{err}"
    );

    // Listening beyond loopback needs a secret (or an explicit insecure).
    let wide = base.replace("127.0.0.1:9", "0.0.0.0:9");
    let out = check(&wide);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("insecure = true") && err.contains("secret"),
        "{err}"
    );
    let out = check(&format!("insecure = true\n{wide}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And `peerd` itself refuses to start that way.
    std::fs::write(&cfg, &wide).expect("write config");
    let out = Command::new(peerd_bin())
        .arg("s")
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(sb.path().join("s.sock"))
        .arg("--state-dir")
        .arg(sb.path().join("s-state"))
        .output()
        .expect("peerd");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a loopback address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Read until the other side closes; false if it is still open after
/// `timeout`.
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// What one client sent through the proxy.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A TCP proxy to a loopback port that records what each client sent.
struct Proxy {
    port: u16,
    recorded: Arc<Mutex<Vec<Recording>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let recorded: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let rec = recorded.clone();
        // The accept thread ends with the test process; each connection's
        // threads end when either side closes.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let log: Recording = Arc::default();
                rec.lock().expect("lock").push(log.clone());
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                std::thread::spawn(move || pump(client, server, Some(log)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Proxy { port, recorded }
    }

    /// What the first client sent so far.
    fn first_connection(&self) -> Vec<u8> {
        let all = self.recorded.lock().expect("lock");
        all.first()
            .map(|l| l.lock().expect("lock").clone())
            .unwrap_or_default()
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, log: Option<Recording>) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(log) = &log {
            log.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
