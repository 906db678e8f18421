//! peerctl and peerd as commands: errors, exit codes, config checking.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use peerlink_e2e::{EXIT_UNREACHABLE, Pair, Sandbox, Value, ctl_cmd, peerd_bin};

#[test]
fn peerctl_says_how_to_start_a_daemon_that_is_not_running() {
    let sb = Sandbox::new();
    let sock = sb.path().join("nobody.sock");
    for args in [&["status"][..], &["send", "x"], &["tail"]] {
        let out = ctl_cmd(&sock)
            .args(["-i", "a"])
            .args(args)
            .output()
            .expect("peerctl");
        assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("'a' is not running"), "{err}");
        assert!(
            err.contains("systemctl start peerd@a") && err.contains("`peerd a`"),
            "{err}"
        );
        assert!(err.contains(&sock.display().to_string()), "{err}");
    }
}

#[test]
fn peerctl_usage_errors_exit_2() {
    let sb = Sandbox::new();
    let out = ctl_cmd(&sb.path().join("x.sock"))
        .arg("frobnicate")
        .output()
        .expect("peerctl");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_prints_the_effective_config() {
    let out = Command::new(peerd_bin())
        .args(["check-config", "a"])
        .env("CONFIGURATION_DIRECTORY", "/nonexistent")
        .output()
        .expect("peerd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
    assert!(text.contains("url = \"ws://127.0.0.1:8081/ws\""), "{text}");
}

#[test]
fn unknown_config_key_is_an_error_naming_key_and_file() {
    let sb = Sandbox::new();
    let cfg = sb.path().join("a.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nhartbeat = \"1s\"\n").expect("write");
    for args in [vec!["check-config", "a"], vec!["a"]] {
        let out = Command::new(peerd_bin())
            .args(&args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("peerd");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("hartbeat") && err.contains(&cfg.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn instances_other_than_a_and_b_need_a_config() {
    let out = Command::new(peerd_bin())
        .args(["check-config", "c"])
        .env("CONFIGURATION_DIRECTORY", "/nonexistent")
        .output()
        .expect("peerd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no config for instance 'c'"), "{err}");
}

#[test]
fn completions_generate_for_every_shell_clap_supports() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = ctl_cmd(&sb.path().join("x.sock"))
            .args(["completions", shell])
            .output()
            .expect("peerctl");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["peerctl", "attach", "status", "json", "null"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        // Where the shell is installed, the script must at least parse.
        if shell == "bash" && Command::new("bash").arg("--version").output().is_ok() {
            let file = sb.path().join("peerctl.bash");
            std::fs::write(&file, &out.stdout).expect("write");
            let check = Command::new("bash")
                .arg("-n")
                .arg(&file)
                .output()
                .expect("bash -n");
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = ctl_cmd(&sb.path().join("x.sock"))
        .args(["completions", "tcsh"])
        .output()
        .expect("peerctl");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn send_null_and_tail_n_from_json_pipe_well() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    // --null: NUL-separated, so a message may hold a newline.
    let mut child = ctl_cmd(&pair.a.socket)
        .args(["send", "--null"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("peerctl send --null");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"first\0two\nlines\0third\0fourth")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    b.wait(Duration::from_secs(20), "b has all four", |b| {
        b.bodies() == ["first", "two\nlines", "third", "fourth"]
    });
    assert!(
        !a.spec.ctl(&["send", "--null", "x"]).status.success(),
        "--null takes no arguments"
    );

    let lines = |args: &[&str]| -> Vec<String> {
        let out = pair.b.ctl(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!text.contains('\x1b'), "no colour on a pipe: {text:?}");
        text.lines().map(String::from).collect()
    };
    // -n: the last N, one message per line (the newline escaped).
    let last2 = lines(&["tail", "-n", "2"]);
    assert_eq!(last2.len(), 2);
    assert!(last2[0].ends_with(" a third") && last2[1].ends_with(" a fourth"));
    let all = lines(&["tail", "-n", "10"]);
    assert!(all[1].ends_with(" a two\\nlines"), "{all:?}");
    // --from SEQ, --json: one object per line, in order.
    let json = lines(&["tail", "--from", "2", "--json"]);
    let seqs: Vec<u64> = json
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            assert_eq!(v["origin"], "a");
            v["seq"].as_u64().unwrap_or(0)
        })
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    let v: Value = serde_json::from_str(&json[0]).expect("JSON");
    assert_eq!(v["body"], "two\nlines");
    // -n 0 without -f: nothing.
    assert!(lines(&["tail", "-n", "0"]).is_empty());
}

#[test]
fn peerd_usage_errors_exit_2_and_say_what_was_meant() {
    let run = |args: &[&str]| {
        Command::new(peerd_bin())
            .args(args)
            .env_remove("PEERD_LOG")
            .output()
            .expect("peerd")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("which instance? e.g. `peerd a`"));
    let out = run(&["a", "extra"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected argument 'extra'"), "{err}");
    assert!(!err.contains("cannot be used"), "{err}");
}

#[test]
fn a_second_peerd_on_the_same_port_says_another_peerd_is_answering() {
    let pair = Pair::new("");
    let (_a, _b) = pair.start_linked();
    // The same instance again, with its socket: found taken first.
    let again = |socket: &std::path::Path| {
        Command::new(peerd_bin())
            .arg("a")
            .arg("--config")
            .arg(&pair.a.config)
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(pair.a.state.with_extension("2"))
            .output()
            .expect("peerd")
    };
    let out = again(&pair.a.socket);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another peerd is already answering"), "{err}");
    assert!(err.contains("holds 127.0.0.1:"), "{err}");
    // Another socket: the port is what is taken, and it says by whom to ask.
    let out = again(&pair.a.socket.with_extension("other"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another program holds that port"), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
}

#[test]
fn invalid_utf8_is_sent_the_same_from_arguments_and_stdin() {
    use std::os::unix::ffi::OsStrExt;
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = ctl_cmd(&pair.a.socket)
        .args(["send", "--wait"])
        .arg(bad)
        .output()
        .expect("peerctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.send_stdin("caf\u{e9}\n");
    assert!(out.status.success());
    let mut c = ctl_cmd(&pair.a.socket);
    let mut child = c
        .args(["send", "--wait"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("peerctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"caf\xe9\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    b.wait(Duration::from_secs(20), "three arrive", |b| {
        b.inbox().len() == 3
    });
    let bodies: Vec<String> = b
        .inbox()
        .iter()
        .map(|e| e["body"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(bodies, ["caf\u{fffd}", "caf\u{e9}", "caf\u{fffd}"]);
}

#[test]
fn ctrl_c_during_a_long_send_says_how_many_were_stored() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    let mut child = ctl_cmd(&pair.a.socket)
        .arg("send")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("peerctl");
    let mut stdin = child.stdin.take().expect("stdin");
    // Feed lines until interrupted (a closed pipe ends the writer).
    let writer = std::thread::spawn(move || {
        let chunk = "a line of the long stream\n".repeat(1000);
        while stdin.write_all(chunk.as_bytes()).is_ok() {}
    });
    // Delivered means stored at a first.
    b.wait(Duration::from_secs(20), "some messages stored", |b| {
        b.status()["journal"]["inbox_next"].as_u64().unwrap_or(0) > 10_000
    });
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let stored: u64 = err
        .strip_prefix("peerctl: interrupted: ")
        .and_then(|r| r.split_whitespace().next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {err}"));
    assert!(err.contains("messages stored"), "{err}");
    let pending: u64 = err
        .split(", ")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // What b ends up with: at least every message said to be stored, and
    // nothing beyond what was sent.
    a.wait(Duration::from_secs(30), "a's queue drains", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    let arrived = b.status()["journal"]["inbox_next"].as_u64().unwrap_or(1) - 1;
    assert!(
        stored > 0 && stored <= arrived && arrived <= stored + pending,
        "{stored} stored, {pending} pending, {arrived} arrived: {err}"
    );
}
