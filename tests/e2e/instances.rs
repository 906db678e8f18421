//! Which instance `peerctl` talks to when none is named (README "Which
//! instance"), with 0, 1 and 2 instances running; and `make demo` beside a
//! user's own `peerd a` and `peerd b` on the default ports.
//!
//! Both use the default runtime paths (and the demo test the default
//! ports), so as root they run in private mount and network namespaces
//! (`/run` an empty tmpfs, loopback their own): other tests and the
//! machine's own daemons are never seen or touched. Not as root, the
//! runtime paths go to a temp `$XDG_RUNTIME_DIR`, and the demo test runs
//! only when 8080 and 8081 are free.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use peerlink_e2e::{
    FAST_TIMERS, Isolation, Sandbox, Value, free_port, peerctl_bin, peerd_bin, private_namespaces,
    prune_env, strip_cargo_env, wait_until,
};

/// A daemon started the way a user would, killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(runtime: &Runtime, log: PathBuf, args: &[&str]) -> Proc {
        let file = std::fs::File::create(&log).expect("log");
        let mut c = Command::new(peerd_bin());
        c.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file);
        runtime.env(&mut c);
        Proc {
            child: c.spawn().expect("spawn peerd"),
            log,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the default runtime paths point for this test.
struct Runtime {
    /// `$XDG_RUNTIME_DIR` (not root); `None`: the real default, in the
    /// private namespaces.
    xdg: Option<PathBuf>,
}

impl Runtime {
    fn env(&self, c: &mut Command) {
        prune_env(c);
        c.env_remove("PEERD_INSTANCE").env_remove("PEERD_SOCKET");
        match &self.xdg {
            Some(x) => c.env("XDG_RUNTIME_DIR", x),
            None => c.env_remove("XDG_RUNTIME_DIR"),
        };
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let mut c = Command::new(peerctl_bin());
        c.args(args).stdin(Stdio::null());
        self.env(&mut c);
        c.output().expect("run peerctl")
    }

    /// For the calling test: `None` when it should stop (done outside,
    /// or skipped with a line saying why).
    fn for_test(name: &str, sb: &Sandbox) -> Option<Runtime> {
        match private_namespaces(name) {
            Isolation::Inside => Some(Runtime { xdg: None }),
            Isolation::Done => None,
            Isolation::Unavailable(why) => {
                // SAFETY: geteuid has no preconditions.
                if unsafe { geteuid() } == 0 {
                    // Root's runtime paths are /run/peerd: shared with the
                    // machine's own daemons.
                    println!("SKIPPED: {name}: {why}");
                    return None;
                }
                let xdg = sb.path().join("xdg");
                std::fs::create_dir_all(&xdg).expect("xdg dir");
                let rt = Runtime { xdg: Some(xdg) };
                // The system service's instances would be seen too.
                let probe = rt.ctl(&["status"]);
                if !err(&probe).contains("no peerd instance is running") {
                    println!("SKIPPED: {name}: peerd instances run on this machine");
                    return None;
                }
                Some(rt)
            }
        }
    }
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", out(o), err(o)))
}

#[test]
fn choosing_an_instance_with_none_one_and_two_running() {
    let sb = Sandbox::new();
    let Some(rt) = Runtime::for_test(
        "instances::choosing_an_instance_with_none_one_and_two_running",
        &sb,
    ) else {
        return;
    };
    let (pa, pb) = (free_port(), free_port());
    for (me, port, peer, peer_port) in [("a", pa, "b", pb), ("b", pb, "a", pa)] {
        std::fs::write(
            sb.path().join(format!("{me}.toml")),
            Sandbox::config(me, port, &[(peer, peer_port)], ""),
        )
        .expect("config");
    }
    let _ = FAST_TIMERS;
    let start = |me: &str| {
        let cfg = sb.path().join(format!("{me}.toml"));
        let state = sb.path().join(format!("{me}-state"));
        let (cfg, state) = (cfg.to_str().unwrap(), state.to_str().unwrap());
        Proc::start(
            &rt,
            sb.path().join(format!("{me}.log")),
            &[me, "--config", cfg, "--state-dir", state],
        )
    };

    // None running, nothing named: said so, for every subcommand (exit 3).
    for args in [&["send", "x"][..], &["tail"], &["status"], &["attach"]] {
        let o = rt.ctl(args);
        assert_eq!(code(&o), 3, "{args:?}: {}", err(&o));
        assert!(
            err(&o).contains("no peerd instance is running") && err(&o).contains("peerd a"),
            "{args:?}: {}",
            err(&o)
        );
    }
    // A socket named with no daemon there: the message names the socket.
    let o = rt.ctl(&["--socket", "run/b.sock", "status"]);
    assert_eq!(code(&o), 3);
    assert!(
        err(&o).contains("no peerd is answering at run/b.sock"),
        "{}",
        err(&o)
    );
    assert!(!err(&o).contains("'a'"), "{}", err(&o));

    // One running (b; a is down): used, and named on stderr each time.
    let b = start("b");
    wait_until(Duration::from_secs(20), "b answers", || {
        code(&rt.ctl(&["-i", "b", "status"])) == 4
    });
    let o = rt.ctl(&["send", "to whoever runs"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(
        err(&o).trim(),
        "peerctl: instance 'b' (the only one running; `-i NAME` chooses)"
    );
    let o = rt.ctl(&["tail"]);
    assert!(
        err(&o).contains("instance 'b' (the only one running"),
        "{}",
        err(&o)
    );
    let o = rt.ctl(&["status"]);
    assert_eq!(code(&o), 4, "a is down");
    assert!(out(&o).starts_with("peerd b ("), "{}", out(&o));
    assert!(err(&o).contains("instance 'b'"), "{}", err(&o));
    let o = rt.ctl(&["-i", "b", "status", "--json"]);
    assert_eq!(json(&o)["peers"][0]["queued_msgs"], 1);
    assert_eq!(err(&o), "", "named: no note");
    // Naming the one that is down is not redirected to the one that runs.
    let o = rt.ctl(&["-i", "a", "send", "for a"]);
    assert_eq!(code(&o), 3);
    assert!(
        err(&o).contains("instance 'a' is not running"),
        "{}",
        err(&o)
    );

    // Two running: status shows both; nothing else guesses (exit 2).
    let mut a = start("a");
    wait_until(Duration::from_secs(20), "a and b linked", || {
        code(&rt.ctl(&["-i", "a", "status"])) == 0 && code(&rt.ctl(&["-i", "b", "status"])) == 0
    });
    let outbox =
        |i: &str| json(&rt.ctl(&["-i", i, "status", "--json"]))["journal"]["outbox_next"].clone();
    let before = (outbox("a"), outbox("b"));
    for args in [&["send", "y"][..], &["tail"], &["attach"], &["tail", "-f"]] {
        let o = rt.ctl(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", err(&o));
        assert!(
            err(&o).contains("2 peerd instances are running (a, b)") && err(&o).contains("-i"),
            "{args:?}: {}",
            err(&o)
        );
        assert_eq!(out(&o), "");
    }
    assert_eq!((outbox("a"), outbox("b")), before, "nothing was sent");
    let o = rt.ctl(&["status"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let text = out(&o);
    let (ia, ib) = (text.find("peerd a ("), text.find("\n\npeerd b ("));
    assert!(ia == Some(0) && ib.is_some(), "both, a first: {text}");
    let o = rt.ctl(&["status", "--json"]);
    let all = json(&o);
    let names: Vec<&str> = all
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|s| s["instance"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    // b down again: status still shows both and says so in its exit.
    drop(b);
    wait_until(Duration::from_secs(20), "a sees b down", || {
        code(&rt.ctl(&["-i", "a", "status"])) == 4
    });
    let o = rt.ctl(&["status"]);
    assert!(code(&o) >= 3, "{}{}", out(&o), err(&o));
    assert!(out(&o).starts_with("peerd a ("), "{}", out(&o));
    // A name always picks exactly that one, with no note.
    let o = rt.ctl(&["-i", "a", "send", "named"]);
    assert_eq!((code(&o), err(&o).as_str()), (0, ""));
    assert!(a.running(), "{}", a.log());
}

/// The journal files of a state directory, by path (the state file is
/// checkpointed every second and left out).
fn journal_files(state: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for log in ["inbox", "outbox"] {
        let dir = state.join("journal").join(log);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).expect("read journal file");
            out.push((f, bytes));
        }
    }
    out
}

#[test]
fn make_demo_leaves_the_users_own_a_and_b_alone() {
    let sb = Sandbox::new();
    let name = "instances::make_demo_leaves_the_users_own_a_and_b_alone";
    let Some(rt) = Runtime::for_test(name, &sb) else {
        return;
    };
    if rt.xdg.is_some()
        && [8080, 8081]
            .iter()
            .any(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
    {
        println!("SKIPPED: {name}: 8080 or 8081 is taken on this machine");
        return;
    }
    // The user's a and b: built-in config (8080, 8081), default sockets.
    let state = |i: &str| sb.path().join(format!("user-{i}"));
    let (sa, sbb) = (state("a"), state("b"));
    let mut a = Proc::start(
        &rt,
        sb.path().join("user-a.log"),
        &["a", "--state-dir", sa.to_str().unwrap()],
    );
    let mut b = Proc::start(
        &rt,
        sb.path().join("user-b.log"),
        &["b", "--state-dir", sbb.to_str().unwrap()],
    );
    let linked =
        || code(&rt.ctl(&["-i", "a", "status"])) == 0 && code(&rt.ctl(&["-i", "b", "status"])) == 0;
    wait_until(Duration::from_secs(20), "the user's a and b linked", linked);
    let o = rt.ctl(&["-i", "a", "send", "--wait", "the user's own message"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let inbox_b = || out(&rt.ctl(&["-i", "b", "tail", "--json", "-n", "1000"]));
    let before = (journal_files(&sa), journal_files(&sbb), inbox_b());
    assert!(before.2.contains("the user's own message"));

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut demo = Command::new("bash");
    demo.arg(repo.join("tests/demo.sh"))
        .env("BIN", peerd_bin().parent().expect("bin dir"))
        .env("TMPDIR", sb.path())
        .stdin(Stdio::null());
    rt.env(&mut demo);
    strip_cargo_env(&mut demo);
    let o = demo.output().expect("run tests/demo.sh");
    let shown = format!("{}{}", out(&o), err(&o));
    assert_eq!(code(&o), 0, "the demo failed:\n{shown}");
    assert!(
        shown.contains("demo ok") && shown.contains(" a hello from a (demo "),
        "{shown}"
    );
    assert!(
        !shown.contains("8080") && !shown.contains("8081"),
        "{shown}"
    );

    assert!(a.running() && b.running(), "{}\n{}", a.log(), b.log());
    assert!(linked(), "the user's a and b are still linked");
    let after = (journal_files(&sa), journal_files(&sbb), inbox_b());
    assert!(before == after, "the user's journals changed:\n{}", after.2);
    assert!(!a.log().contains("demo") && !b.log().contains("demo"));
}
