//! peerctl and peerd as commands: errors, exit codes, config checking.

use std::process::Command;

use peerlink_e2e::{EXIT_UNREACHABLE, Sandbox, ctl_cmd, peerd_bin};

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
