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
