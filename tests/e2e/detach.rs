//! `peerd --daemon`: the parent returns only once the detached daemon is
//! ready (or with its error), the pidfile names the live daemon.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use peerlink_e2e::{Sandbox, Spec, free_port, peerd_bin, wait_until};

const LONG: Duration = Duration::from_secs(20);

/// `peerd NAME --daemon` with the spec's files and `extra` arguments;
/// returns when the parent exits.
fn daemonize(spec: &Spec, extra: &[&str]) -> Output {
    Command::new(peerd_bin())
        .args(spec.args())
        .arg("--daemon")
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("PEERD_SOCKET")
        .output()
        .expect("run peerd --daemon")
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by whoever adopted it) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Kills the detached daemon on drop, whatever the test did.
struct Detached(u32);

impl Drop for Detached {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).expect("read pidfile");
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("pidfile holds {text:?}"))
}

#[test]
fn daemon_mode_returns_once_ready_with_a_pidfile_and_a_log() {
    let sb = Sandbox::new();
    let spec = sb.spec(
        "d",
        &Sandbox::config("d", free_port(), &[("e", free_port())], ""),
    );
    let out = daemonize(&spec, &[]);
    let pidfile = spec.state.join("peerd.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    let _guard = pid.map(Detached);
    assert!(
        out.status.success(),
        "parent exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = read_pid(&pidfile);
    assert!(alive(pid), "pid {pid} from the pidfile is running");

    // Ready means ready: status answers at once, from that very process.
    let status = spec.ctl(&["status", "--json"]);
    assert!(
        matches!(status.status.code(), Some(0) | Some(4)),
        "peerctl status right after the parent returned: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(json["pid"].as_u64(), Some(u64::from(pid)));

    // It logs to the log file in the state dir.
    let log = spec.state.join("peerd.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("ready: listening on"), "log file: {text}");

    // A second daemon for the same files is refused with a clear error.
    let again = daemonize(&spec, &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("pid"), "{err}");
    assert!(alive(pid), "the first daemon is untouched");

    // SIGTERM: exits, removes its socket and its pidfile.
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(st.is_ok_and(|s| s.success()));
    wait_until(LONG, "the daemon exits and cleans up", || {
        !alive(pid) && !spec.socket.exists() && !pidfile.exists()
    });
}

#[test]
fn daemon_mode_pidfile_and_log_file_can_be_chosen() {
    let sb = Sandbox::new();
    let spec = sb.spec("f", &Sandbox::config("f", free_port(), &[], ""));
    let (pidfile, log) = (sb.path().join("run/f.pid"), sb.path().join("logs/f.log"));
    let out = daemonize(
        &spec,
        &[
            "--pidfile",
            pidfile.to_str().expect("utf-8"),
            "--log-file",
            log.to_str().expect("utf-8"),
        ],
    );
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    let _guard = pid.map(Detached);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pid.is_some_and(alive),
        "pidfile {pidfile:?} names a live daemon"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("ready: listening on"), "log file: {text}");
    assert!(!spec.state.join("peerd.pid").exists());
}

#[test]
fn daemon_mode_with_a_bad_config_fails_in_the_parent() {
    let sb = Sandbox::new();
    let spec = sb.spec("g", "listen = \"127.0.0.1:0\"\nhartbeat = \"1s\"\n");
    let out = daemonize(&spec, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hartbeat"), "{err}");
    assert!(
        !spec.state.join("peerd.pid").exists(),
        "nothing was started"
    );
}

#[test]
fn daemon_mode_reports_the_detached_daemons_start_error() {
    // The config is fine, but the port is taken: only the daemon, after
    // the fork, finds out; the parent must say why and exit non-zero.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let sb = Sandbox::new();
    let spec = sb.spec("h", &Sandbox::config("h", port, &[], ""));
    let out = daemonize(&spec, &[]);
    assert!(!out.status.success(), "parent must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains(&port.to_string()),
        "the daemon's own error: {err}"
    );
    wait_until(LONG, "the failed daemon removed its pidfile", || {
        !spec.state.join("peerd.pid").exists()
    });
}
