//! peerd as a service: systemd notification (READY, STATUS, WATCHDOG,
//! STOPPING) on a notify socket the test owns, the control socket's mode
//! under a service manager, and a clean SIGTERM in the middle of traffic.
//! (`--daemon` is in `detach.rs`, `make install` in `install.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use peerlink_e2e::{Daemon, Pair, Sandbox, Value, ctl_cmd, free_port, peerd_bin, wait_until};

const LONG: Duration = Duration::from_secs(20);

/// One datagram the daemon sent to NOTIFY_SOCKET, and, for the one that
/// carried READY=1, the exit code of `peerctl status` run the moment it
/// arrived.
struct Note {
    text: String,
    status_at_ready: Option<Option<i32>>,
}

/// The service manager's end of sd_notify(3): a datagram socket in the
/// sandbox; a thread reads it and queues what arrives.
struct NotifySocket {
    path: PathBuf,
    notes: mpsc::Receiver<Note>,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path, control_socket: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let (tx, rx) = mpsc::channel();
        let control = control_socket.to_path_buf();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Stop once the test has dropped the receiver.
                        if tx
                            .send(Note {
                                text: String::new(),
                                status_at_ready: None,
                            })
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let status_at_ready = text.lines().any(|l| l == "READY=1").then(|| {
                    ctl_cmd(&control)
                        .args(["status", "--json"])
                        .output()
                        .ok()
                        .and_then(|o| o.status.code())
                });
                if tx
                    .send(Note {
                        text,
                        status_at_ready,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        NotifySocket {
            path,
            notes: rx,
            seen: Vec::new(),
        }
    }

    /// Wait for a datagram with a line that `pred` accepts; returns it.
    fn wait_line(&mut self, what: &str, mut pred: impl FnMut(&str) -> bool) -> (String, Note) {
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            let Ok(note) = self.notes.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if note.text.is_empty() {
                continue;
            }
            self.seen.push(note.text.clone());
            if let Some(line) = note.text.lines().find(|l| pred(l)) {
                return (line.to_string(), note);
            }
        }
        panic!(
            "no notification with {what} in {LONG:?}; got: {:#?}",
            self.seen
        );
    }
}

#[test]
fn ready_status_and_stopping_reach_the_notify_socket() {
    let pair = Pair::new("");
    let mut notify = NotifySocket::bind(pair.sandbox.path(), &pair.a.socket);
    let mut a = Daemon::spawn_env(&pair.a, &[], &[("NOTIFY_SOCKET", notify.path.as_os_str())]);

    // READY=1 only once the control socket answers: peerctl run the
    // moment it arrives must reach the daemon (0, or 4 = link down).
    let (_, ready) = notify.wait_line("READY=1", |l| l == "READY=1");
    let code = ready.status_at_ready.flatten();
    assert!(
        matches!(code, Some(0) | Some(4)),
        "peerctl status at READY=1 exited {code:?}: the control socket was not up yet;\n{}",
        pair.a.log()
    );
    assert!(
        ready.text.lines().any(|l| l.starts_with("STATUS=b: ")),
        "READY=1 comes with a first STATUS: {:?}",
        ready.text
    );
    // Under a service manager the socket is for the admin group too.
    let mode = std::fs::metadata(&pair.a.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode under a service manager");

    // b is down: STATUS says backoff and why.
    notify.wait_line("STATUS=b: backoff ..., ...refused", |l| {
        l.starts_with("STATUS=b: backoff") && l.contains("refused")
    });
    // b comes: connected, with the RTT once a pong came back.
    let b = Daemon::start(&pair.b);
    notify.wait_line("STATUS=b: connected, rtt", |l| {
        l.starts_with("STATUS=b: connected, rtt ") && l.ends_with("ms")
    });
    // b goes: not connected any more.
    drop(b);
    notify.wait_line("STATUS=b: (not connected)", |l| {
        l.starts_with("STATUS=b: ") && !l.starts_with("STATUS=b: connected")
    });

    a.signal("TERM");
    notify.wait_line("STOPPING=1", |l| l == "STOPPING=1");
    assert_eq!(a.wait_exit(LONG), Some(0));
}

#[test]
fn watchdog_is_fed_at_half_the_interval_the_unit_asks_for() {
    let sb = Sandbox::new();
    let spec = sb.spec("w", &Sandbox::config("w", free_port(), &[], ""));
    let mut notify = NotifySocket::bind(sb.path(), &spec.socket);
    let usec = std::ffi::OsString::from("1000000");
    let mut d = Daemon::spawn_env(
        &spec,
        &[],
        &[
            ("NOTIFY_SOCKET", notify.path.as_os_str()),
            ("WATCHDOG_USEC", usec.as_os_str()),
        ],
    );
    notify.wait_line("READY=1", |l| l == "READY=1");
    notify.wait_line("WATCHDOG=1", |l| l == "WATCHDOG=1");
    let start = Instant::now();
    for _ in 0..3 {
        notify.wait_line("WATCHDOG=1", |l| l == "WATCHDOG=1");
    }
    // WatchdogSec=1s: a pet every 500 ms, so three more take ~1.5 s; a
    // feeder at the full interval would need 3 s and miss the deadline.
    let took = start.elapsed();
    assert!(
        took > Duration::from_millis(1200) && took < Duration::from_millis(2500),
        "3 WATCHDOG=1 took {took:?}, want about 1.5s"
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0));
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_socket_is_private() {
    let sb = Sandbox::new();
    let spec = sb.spec("p", &Sandbox::config("p", free_port(), &[], ""));
    let d = Daemon::start(&spec);
    let mode = std::fs::metadata(&spec.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(d);
}

#[test]
fn socket_mode_under_a_service_manager_does_not_depend_on_the_umask() {
    // systemd units set UMask=; Linux applies it to the socket at bind().
    let sb = Sandbox::new();
    let spec = sb.spec("u", &Sandbox::config("u", free_port(), &[], ""));
    let log = std::fs::File::create(&spec.log).expect("log");
    let mut child = Command::new("sh")
        .args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(peerd_bin())
        .args(spec.args())
        .env("INVOCATION_ID", "0123456789abcdef")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("PEERD_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn peerd under sh");
    let answered = std::panic::catch_unwind(|| {
        wait_until(LONG, "the control socket answers", || {
            matches!(spec.ctl(&["status"]).status.code(), Some(0) | Some(4))
        })
    });
    let mode = std::fs::metadata(&spec.socket).map(|m| m.permissions().mode() & 0o777);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answered.is_ok(),
        "peerd did not come up; log:\n{}",
        spec.log()
    );
    assert_eq!(
        mode.ok(),
        Some(0o660),
        "umask 077 must not narrow the socket's mode"
    );
}

/// SPEC §9: SIGTERM in the middle of traffic closes the link with "going
/// away", removes the socket and exits 0 within 2 s; what b received is
/// exactly a's messages in order, nothing acknowledged as delivered is
/// missing, and with a durable journal every accepted message arrives
/// after a restart.
#[test]
fn sigterm_during_traffic_exits_0_within_2s_and_loses_nothing_delivered() {
    let pair = Pair::new("");
    let (mut a, b) = pair.start_linked();
    let durable = a.status()["journal"]["durable"] == true;

    // Traffic: one-by-one sends that wait for b's ack, then a bulk stream
    // on top; SIGTERM lands in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let waiter = {
        let (stop, delivered, sock) = (stop.clone(), delivered.clone(), pair.a.socket.clone());
        std::thread::spawn(move || {
            for i in 1..=5_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let out = ctl_cmd(&sock)
                    .args(["send", "--wait", "--timeout", "5s", &format!("w{i}")])
                    .output()
                    .expect("peerctl send --wait");
                if !out.status.success() {
                    break;
                }
                delivered.store(i, Ordering::SeqCst);
            }
        })
    };
    wait_until(LONG, "a few messages delivered one by one", || {
        delivered.load(Ordering::SeqCst) >= 3
    });
    let bulk: String = (1..=100_000).map(|i| format!("bulk{i}\n")).collect();
    let bulk_sock = pair.a.socket.clone();
    let bulk_thread = std::thread::spawn(move || {
        use std::io::Write;
        let mut child = ctl_cmd(&bulk_sock)
            .arg("send")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("peerctl send");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(bulk.as_bytes());
        }
        let _ = child.wait();
    });
    b.wait(LONG, "the bulk is flowing to b", |b| {
        b.peer("a")["msgs_received"].as_u64() >= Some(2_000)
    });

    let t0 = Instant::now();
    a.signal("TERM");
    let code = a.wait_exit(Duration::from_secs(5));
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = waiter.join();
    let _ = bulk_thread.join();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM; log:\n{}", pair.a.log());
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?}; log:\n{}",
        pair.a.log()
    );
    assert!(!pair.a.socket.exists(), "control socket removed");
    // (b's log, not its last_error: b's redial may already have replaced it.)
    b.wait(LONG, "b saw a going away", |b| {
        b.spec
            .log()
            .lines()
            .any(|l| l.contains("link down") && l.contains("going away"))
    });

    // Exactly once, in order, for what arrived; every acked one is there.
    let check = |inbox: &[Value]| {
        let seqs: Vec<u64> = inbox
            .iter()
            .map(|e| e["origin_seq"].as_u64().unwrap_or(0))
            .collect();
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert!(seqs == want, "b's inbox is not a's messages 1..n in order");
        let bodies: std::collections::HashSet<String> = inbox
            .iter()
            .map(|e| e["body"].as_str().unwrap_or_default().to_string())
            .collect();
        let acked = delivered.load(Ordering::SeqCst);
        let mut ws: Vec<&str> = inbox
            .iter()
            .filter_map(|e| e["body"].as_str().filter(|b| b.starts_with('w')))
            .collect();
        ws.truncate(50);
        for i in 1..=acked {
            assert!(
                bodies.contains(&format!("w{i}")),
                "w{i} was acknowledged (w1..=w{acked}) but is missing from b's {} messages; \
                 w* there: {ws:?}",
                inbox.len()
            );
        }
        seqs.len()
    };
    let before = check(&b.inbox());
    assert!(before >= 2_000);

    if durable {
        // Every message a accepted is in its journal: a restart delivers
        // the rest, still exactly once and in order.
        let a2 = Daemon::start(&pair.a);
        let accepted = a2.status()["journal"]["outbox_next"].as_u64().unwrap_or(1) - 1;
        b.wait(LONG, "b has every message a accepted", |b| {
            b.inbox().len() as u64 >= accepted
        });
        assert_eq!(check(&b.inbox()) as u64, accepted);
    }
}
