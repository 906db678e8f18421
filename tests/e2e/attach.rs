//! `peerctl attach` through pipes and through a pseudo-terminal, and what
//! the other commands show a terminal (colour, never with NO_COLOR).

use std::io::{BufRead, BufReader, Read, Write};
use std::num::NonZeroU16;
use std::process::Stdio;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use peerlink_e2e::{Pair, ctl_cmd, peerctl_bin, wait_until};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn attach_through_pipes_sends_lines_and_prints_arrivals() {
    let pair = Pair::new("");
    let (_a, b) = pair.start_linked();
    let mut child = ctl_cmd(&pair.a.socket)
        .arg("attach")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn peerctl attach");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"line one\n\nline two\n")
        .and_then(|()| stdin.flush())
        .expect("write to attach");
    b.wait(LONG, "b receives both lines, the empty one skipped", |b| {
        b.bodies() == ["line one", "line two"]
    });
    b.send(&["back to the pipe"]);
    let line = lines.recv_timeout(LONG).expect("attach prints the arrival");
    // Like `tail`: time, origin, body; no prompt, no colour on a pipe.
    assert!(line.ends_with(" b back to the pipe"), "{line:?}");
    assert!(!line.contains('\x1b'), "{line:?}");
    drop(stdin);
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "attach did not exit at EOF");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    assert!(status.success(), "{status}: {err}");
}

/// A program on a pseudo-terminal; everything it writes is collected, and
/// fed to a terminal emulator (`vt100`) so tests check the screen a person
/// would see, not the escape sequences that drew it.
struct Pty {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    output: Arc<Mutex<(Vec<u8>, vt100::Parser)>>,
}

impl Pty {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Pty {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 100,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut cmd = CommandBuilder::new(peerctl_bin());
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().to_string();
            if k.starts_with("PEERD_") || k == "NO_COLOR" || k.starts_with("CLICOLOR") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("TERM", "xterm");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pty.slave.spawn_command(cmd).expect("spawn on the pty");
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().expect("pty reader");
        let writer = pty.master.take_writer().expect("pty writer");
        let (rows, cols) = (
            NonZeroU16::new(24).expect("24"),
            NonZeroU16::new(100).expect("100"),
        );
        let output = Arc::new(Mutex::new((Vec::new(), vt100::Parser::new(rows, cols, 0))));
        let sink = output.clone();
        std::thread::spawn(move || {
            let _master = pty.master; // keep the pty open while reading
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut out) = sink.lock() {
                    out.0.extend_from_slice(&buf[..n]);
                    out.1.process(&buf[..n]);
                }
            }
        });
        Pty {
            child,
            writer,
            output,
        }
    }

    /// Everything written, escape sequences and all.
    fn raw(&self) -> String {
        let bytes = self.output.lock().map(|o| o.0.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).to_string()
    }

    /// The screen's lines, trailing blank ones dropped.
    fn screen(&self) -> Vec<String> {
        let text = self
            .output
            .lock()
            .map(|o| o.1.screen().contents())
            .unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }

    fn type_keys(&mut self, keys: &str) {
        self.writer
            .write_all(keys.as_bytes())
            .and_then(|()| self.writer.flush())
            .expect("type on the pty");
    }

    /// Wait until the screen satisfies `cond`.
    fn wait_for(&self, what: &str, cond: impl Fn(&[String]) -> bool) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(LONG, what, || cond(&self.screen()))
        }));
        if let Err(e) = r {
            eprintln!(
                "--- screen ---\n{}\n--- output ---\n{:?}",
                self.screen().join("\n"),
                self.raw()
            );
            std::panic::resume_unwind(e);
        }
    }

    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit; terminal output:\n{:?}", self.raw());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The last line on the screen.
fn last(screen: &[String]) -> &str {
    screen.last().map(String::as_str).unwrap_or("")
}

#[test]
fn attach_on_a_terminal_keeps_the_prompt_and_partial_input_intact() {
    let pair = Pair::new("");
    let (_a, b) = pair.start_linked();
    let sock = pair.a.socket.display().to_string();
    let mut term = Pty::spawn(&["--socket", &sock, "attach"], &[]);
    term.wait_for("the prompt", |s| last(s) == "a>");
    term.type_keys("hello from a terminal\r");
    b.wait(LONG, "b receives the typed line", |b| {
        b.bodies() == ["hello from a terminal"]
    });

    // A message arrives while a line is half typed: it gets a line of its
    // own above the prompt, which comes back with the partial input.
    term.type_keys("half typed");
    term.wait_for("the partial input", |s| last(s) == "a> half typed");
    b.send(&["arrives mid-line"]);
    // The screen README "attach" shows (its transcript "attach-typing").
    let shown = screen_in_readme("attach-typing");
    term.wait_for("the arrival above the prompt and partial input", |s| {
        s == [
            "a> hello from a terminal",
            "[b] arrives mid-line",
            "a> half typed",
        ] && s == shown.as_slice()
    });
    term.type_keys(" and done\r");
    b.wait(
        LONG,
        "b receives the line finished after the arrival",
        |b| b.bodies().last().map(String::as_str) == Some("half typed and done"),
    );

    // Ctrl-D on an empty line leaves cleanly (transcript "attach-done").
    let shown = screen_in_readme("attach-done");
    term.wait_for("a fresh prompt", |s| {
        last(s) == "a>" && s == shown.as_slice()
    });
    term.type_keys("\x04");
    assert!(term.wait_exit().success());
    let after: Vec<String> = peerlink_e2e::readme_block("attach-done")
        .into_iter()
        .skip_while(|l| l != "$ echo $?")
        .collect();
    assert_eq!(after, ["$ echo $?", "0"], "README shows exit status 0");
}

/// The screen lines of README transcript `name`: those after its first
/// `$` line, up to the next one.
fn screen_in_readme(name: &str) -> Vec<String> {
    peerlink_e2e::readme_block(name)
        .into_iter()
        .skip(1)
        .take_while(|l| !l.starts_with("$ "))
        .collect()
}

#[test]
fn attach_leaves_on_ctrl_c_without_sending_the_partial_line() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    let sock = pair.a.socket.display().to_string();
    let mut term = Pty::spawn(&["--socket", &sock, "attach"], &[]);
    term.wait_for("the prompt", |s| last(s) == "a>");
    term.type_keys("sent\r");
    b.wait(LONG, "b receives the first line", |b| {
        b.bodies() == ["sent"]
    });
    term.type_keys("never sent");
    term.wait_for("the partial input", |s| last(s) == "a> never sent");
    term.type_keys("\x03");
    assert!(term.wait_exit().success());
    // Everything a sent is acknowledged by b: "never sent" was not sent.
    a.wait(LONG, "a's queue is empty", |a| {
        a.peer("b")["queued_msgs"] == 0
    });
    assert_eq!(b.bodies(), ["sent"]);
}

#[test]
fn status_and_tail_colour_a_terminal_but_never_with_no_color() {
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    a.send(&["x"]);
    b.wait(LONG, "b has the message", |b| b.bodies() == ["x"]);
    let sock = pair.b.socket.display().to_string();
    for (cmd, what) in [("status", "peer a: connected"), ("tail", " a x")] {
        for no_color in [false, true] {
            let env: &[(&str, &str)] = if no_color { &[("NO_COLOR", "1")] } else { &[] };
            let mut term = Pty::spawn(&["--socket", &sock, cmd], env);
            assert!(term.wait_exit().success(), "{cmd}");
            term.wait_for(what, |s| s.iter().any(|l| l.contains(what)));
            assert_eq!(
                term.raw().contains("\x1b["),
                !no_color,
                "{cmd}, NO_COLOR {no_color}: {:?}",
                term.raw()
            );
        }
    }
}

#[test]
fn tail_on_a_terminal_says_when_there_is_nothing_to_show() {
    let pair = Pair::new("");
    let (_a, _b) = pair.start_linked();
    let sock = pair.b.socket.display().to_string();
    let mut term = Pty::spawn(&["--socket", &sock, "tail"], &[]);
    assert!(term.wait_exit().success());
    term.wait_for("the note", |s| s == ["peerctl: the inbox is empty"]);
    // In a pipe it stays silent (the other tail tests read empty output).
    let out = pair.b.ctl(&["tail"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}
