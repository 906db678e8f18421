//! The README's command transcripts are real: this test runs them.
//!
//! Every fenced block of README.md with a `$ ` line is a transcript and
//! must follow a marker `<!-- transcript: NAME -->`. Blocks of one NAME
//! form a session, run here in README order: the `$` commands run one by
//! one with `bash` in a temp dir of the session (`HOME` too), with the
//! fresh `peerd` and `peerctl` first on `PATH`, and what they print
//! (stdout and stderr, then `[exit N]` when not 0) must match the lines
//! below each command. Names in [`EXTERNAL`] are checked by the test named
//! there instead ([`peerlink_e2e::readme_block`]).
//!
//! What cannot repeat is compared as a placeholder on both sides: times,
//! durations, pids, epochs, millisecond stamps, loopback ports, which
//! side's dial won the session when both dialled at once, and how much of
//! a too-long stdin line was read before it was refused. The
//! README shows `a` on port 60533 and `b` on 37207; the session's real
//! ports are swapped in before a command runs and back out of what it
//! printed.
//!
//! Forms the runner understands:
//! - `CMD &`: a background job (`peerd NAME ... --socket S ...` is a
//!   daemon); `kill %N` stops job N. After these and every other command,
//!   the runner waits (with a deadline) until every running daemon's links
//!   have settled: up, with nothing queued, to peers that run; in backoff
//!   after a failed dial to peers that do not.
//! - `CMD   # then, elsewhere: OTHER`: CMD runs; once it printed its first
//!   line OTHER runs, and when CMD printed all the lines shown before a
//!   final `^C`, it gets SIGINT.
//!
//! `README_BLESS=1 cargo test --test e2e readme` writes what the commands
//! printed into README.md instead of comparing (then review the diff).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use peerlink_e2e::{
    Sandbox, Value, free_port, peerctl_bin, peerd_bin, prune_env, readme_blocks, strip_cargo_env,
    wait_until,
};
use regex::Regex;

/// Transcripts checked by other tests: (name, test).
const EXTERNAL: &[(&str, &str)] = &[
    (
        "metrics-grep",
        "metrics::metrics_parse_while_traffic_flows_and_match_status",
    ),
    (
        "console-url",
        "console::the_console_in_a_real_browser_shows_the_link_sends_and_receives",
    ),
    (
        "attach-typing",
        "attach::attach_on_a_terminal_keeps_the_prompt_and_partial_input_intact",
    ),
    (
        "attach-done",
        "attach::attach_on_a_terminal_keeps_the_prompt_and_partial_input_intact",
    ),
    // Under systemd on the test hosts: tests/hosts/run.sh asserts these
    // lines (`last reload: applied ... heartbeat 5s -> 2s`) on both hosts.
    ("hosts-reload", "make test-hosts (tests/hosts/run.sh)"),
    (
        "journal-repair",
        "storage::damage_in_the_last_segment_refuses_to_start_and_repair_says_what_it_drops",
    ),
];

/// The ports the README shows for a and b.
const DOC_PORTS: [u16; 2] = [60533, 37207];

const LONG: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One `$` command and the lines the README shows under it.
#[derive(Debug, Clone)]
struct Step {
    cmd: String,
    expected: Vec<String>,
}

fn steps(body: &[String]) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for line in body {
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.push(Step {
                cmd: cmd.to_string(),
                expected: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.expected.push(line.clone());
        }
    }
    out
}

/// Placeholders for what differs from run to run.
struct Normalizer {
    rules: Vec<(Regex, &'static str)>,
}

impl Normalizer {
    fn new() -> Self {
        let r = |re: &str, to: &'static str| (Regex::new(re).expect("regex"), to);
        Normalizer {
            rules: vec![
                r(r"\x1b\[[0-9;]*[A-Za-z]", ""),
                r(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<TIME>"),
                r(r#""(\w+_ms|rtt_us|pid)":( ?)\d+"#, "\"$1\":$2<N>"),
                r(r"\b(pid:\s+)\d+", "${1}<N>"),
                // how much of a too-long stdin line was read when refused
                r(r"of more than \d+ bytes", "of more than <N> bytes"),
                r(r"\b[0-9a-f]{16}\b", "<EPOCH>"),
                r(
                    r"\b\d+(\.\d+)? ?(ms|us|µs|s|m|h|d)\b( \d+(ms|us|µs|s|m|h|d)\b)*",
                    "<DUR>",
                ),
                r(r"(127\.0\.0\.1|localhost):\d+", "$1:<PORT>"),
                // which side's dial won when both dial at once
                r(r"\b(inbound from|outbound to)\b", "<DIR>"),
                r(
                    r#""direction": "(inbound|outbound)""#,
                    "\"direction\": \"<DIR>\"",
                ),
                // the journal's timing histograms in `status --json`
                r(r"^(\s*)\d+(,?)$", "$1<N>$2"),
                r(r#""(sum|count)": \d+"#, "\"$1\": <N>"),
                r(r"[ \t]+$", ""),
            ],
        }
    }

    fn apply(&self, line: &str) -> String {
        let mut s = line.to_string();
        for (re, to) in &self.rules {
            s = re.replace_all(&s, *to).into_owned();
        }
        s
    }
}

/// A daemon the session started.
struct Job {
    child: Child,
    daemon: Option<(String, String)>,
}

struct Session {
    name: String,
    dir: PathBuf,
    cwd: PathBuf,
    ports: [u16; 2],
    jobs: Vec<Option<Job>>,
    /// When each daemon (by socket) was stopped, ms since the epoch.
    stopped: BTreeMap<String, u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Session {
    fn new(name: &str, sb: &Sandbox) -> Session {
        let dir = sb.path().join(name);
        std::fs::create_dir_all(&dir).expect("session dir");
        let ports = [free_port(), free_port()];
        // The configs `peerctl at work` shows; the ports are the session's.
        // Session "limits" (README "Empty and big messages") says it adds
        // a smaller max_message.
        let extra = if name == "limits" {
            "max_message = \"64KiB\"\n"
        } else {
            ""
        };
        for (me, peer, mine, theirs) in [("a", "b", 0, 1), ("b", "a", 1, 0)] {
            std::fs::write(
                dir.join(format!("{me}.toml")),
                format!(
                    "listen = \"127.0.0.1:{}\"\n{extra}\n[[peer]]\nname = \"{peer}\"\nurl = \"ws://127.0.0.1:{}/ws\"\n",
                    ports[mine], ports[theirs]
                ),
            )
            .expect("config");
        }
        let cwd = if name == "man" {
            repo().to_path_buf()
        } else {
            dir.clone()
        };
        Session {
            name: name.to_string(),
            dir,
            cwd,
            ports,
            jobs: Vec::new(),
            stopped: BTreeMap::new(),
        }
    }

    fn to_real(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (doc, real) in DOC_PORTS.iter().zip(self.ports) {
            s = s.replace(&format!(":{doc}"), &format!(":{real}"));
        }
        s
    }

    fn to_doc(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (doc, real) in DOC_PORTS.iter().zip(self.ports) {
            s = s.replace(&format!(":{real}"), &format!(":{doc}"));
        }
        s
    }

    fn command(&self, cmd: &str) -> Command {
        self.bash(&format!("{{ {}\n}} 2>&1", self.to_real(cmd)))
    }

    /// `bash -c SCRIPT` in the session, in a process group of its own (so
    /// a signal reaches the whole command).
    fn bash(&self, script: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(script)
            .process_group(0)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        prune_env(&mut c);
        strip_cargo_env(&mut c);
        let bins = peerd_bin().parent().expect("bin dir");
        if self.cwd == self.dir {
            c.env(
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    bins.display()
                ),
            )
            .env("HOME", &self.dir);
        } else {
            // In the source tree (`make ...`): the user's own toolchain.
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", bins.display()))
                .env_remove("CARGO");
        }
        c.env("LC_ALL", "C.UTF-8")
            .env("TERM", "dumb")
            .env_remove("NO_COLOR")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        c
    }

    /// Run one step; what it printed, as lines (with `[exit N]`).
    fn run(&mut self, step: &Step) -> Vec<String> {
        let cmd = step.cmd.trim();
        // `CMD &`, maybe followed by a `# comment`.
        let bare = match cmd.rsplit_once(" # ") {
            Some((before, _)) if before.trim_end().ends_with('&') => before.trim_end(),
            _ => cmd,
        };
        if let Some(bg) = bare.strip_suffix('&') {
            return self.background(bg.trim());
        }
        if let Some(n) = cmd.strip_prefix("kill %") {
            let n: usize = n
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("kill %N");
            self.kill(n);
            return Vec::new();
        }
        if let Some((main, other)) = cmd.split_once("# then, elsewhere:") {
            return self.with_other(main.trim(), other.trim(), &step.expected);
        }
        let out = self.command(cmd).output().expect("run bash");
        self.settle();
        let mut lines = lines_of(&out.stdout);
        if let Some(c) = out.status.code().filter(|c| *c != 0) {
            lines.push(format!("[exit {c}]"));
        }
        lines.iter().map(|l| self.to_doc(l)).collect()
    }

    fn background(&mut self, cmd: &str) -> Vec<String> {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let daemon = (words.first() == Some(&"peerd")).then(|| {
            let name = words.get(1).expect("peerd NAME").to_string();
            let socket = words
                .iter()
                .position(|w| *w == "--socket")
                .and_then(|i| words.get(i + 1))
                .expect("a daemon in a transcript names its --socket")
                .to_string();
            (name, socket)
        });
        // `exec`: the job is the command itself, so `kill %N` reaches it.
        let mut c = self.bash(&format!("exec {}", self.to_real(cmd)));
        c.stdout(Stdio::null());
        let child = c.spawn().expect("spawn job");
        if let Some((_, socket)) = &daemon {
            self.stopped.remove(socket);
        }
        self.jobs.push(Some(Job { child, daemon }));
        self.settle();
        Vec::new()
    }

    fn kill(&mut self, n: usize) {
        let mut job = self
            .jobs
            .get_mut(n - 1)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("{}: no job %{n}", self.name));
        let pid = job.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + LONG;
        while matches!(job.child.try_wait(), Ok(None)) {
            assert!(Instant::now() < deadline, "job %{n} did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some((_, socket)) = job.daemon {
            self.stopped.insert(socket, now_ms());
        }
        self.settle();
    }

    fn daemons(&self) -> Vec<(String, String)> {
        self.jobs
            .iter()
            .flatten()
            .filter_map(|j| j.daemon.clone())
            .collect()
    }

    fn status(&self, socket: &str) -> Option<Value> {
        let out = Command::new(peerctl_bin())
            .current_dir(&self.cwd)
            .args(["--socket", socket, "status", "--json"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Wait until each running daemon answers, its links to running peers
    /// are up and those to stopped ones have failed a dial since.
    fn settle(&self) {
        let daemons = self.daemons();
        let running: Vec<&str> = daemons.iter().map(|(n, _)| n.as_str()).collect();
        wait_until(LONG, &format!("{}: the links settle", self.name), || {
            daemons.iter().all(|(_, socket)| {
                let Some(st) = self.status(socket) else {
                    return false;
                };
                let since = st["started_ms"].as_u64().unwrap_or(0);
                st["peers"].as_array().into_iter().flatten().all(|p| {
                    let name = p["name"].as_str().unwrap_or("");
                    if running.contains(&name) {
                        return p["state"] == "connected" && p["queued_msgs"] == 0;
                    }
                    let stopped = daemons
                        .iter()
                        .find(|(n, _)| n == name)
                        .and_then(|(_, s)| self.stopped.get(s))
                        .copied();
                    let after = stopped
                        .or_else(|| {
                            self.stopped
                                .iter()
                                .find(|(s, _)| s.starts_with(name))
                                .map(|(_, t)| *t)
                        })
                        .unwrap_or(since);
                    p["state"] == "backoff"
                        && p["last_error"]
                            .as_str()
                            .is_some_and(|e| e.starts_with("connect "))
                        && p["last_error_ms"].as_u64().is_some_and(|t| t >= after)
                })
            })
        });
    }

    fn with_other(&mut self, main: &str, other: &str, expected: &[String]) -> Vec<String> {
        // The lines shown tell when it is done: all of them, or all before
        // a final `^C` (then it is interrupted).
        let interrupt = expected.last().is_some_and(|l| l == "^C");
        let want = expected.len() - usize::from(interrupt);
        let mut child = self.command(main).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut got = Vec::new();
        let deadline = Instant::now() + LONG;
        let mut other_done = false;
        while got.len() < want.max(1) && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
                got.push(l);
            }
            if !got.is_empty() && !other_done {
                other_done = true;
                let out = self.command(other).output().expect("run the other command");
                assert!(
                    out.status.success(),
                    "{other}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        if interrupt {
            let _ = Command::new("kill")
                .args(["-INT", "--", &format!("-{}", child.id())])
                .status();
        }
        let deadline = Instant::now() + LONG;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{}: `{main}` did not end", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(l);
        }
        if interrupt {
            got.push("^C".into());
        }
        got.iter().map(|l| self.to_doc(l)).collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for job in self.jobs.iter_mut().flatten() {
            let _ = job.child.kill();
            let _ = job.child.wait();
        }
    }
}

fn lines_of(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Tools some transcripts use, beyond bash and coreutils.
fn missing_tools(body: &[String]) -> Vec<&'static str> {
    let text = body.join("\n");
    ["jq", "man", "make"]
        .into_iter()
        .filter(|t| text.contains(&format!("{t} ")) || text.contains(&format!("| {t}")))
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect()
}

#[test]
fn readme_transcripts_are_what_the_commands_print() {
    let readme_path = repo().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let blocks = readme_blocks(&readme);
    // Every transcript is marked, and every mark is someone's job.
    let unmarked: Vec<usize> = blocks
        .iter()
        .filter(|b| b.name.is_none() && b.body.iter().any(|l| l.starts_with("$ ")))
        .map(|b| b.line)
        .collect();
    assert!(
        unmarked.is_empty(),
        "README.md: transcripts without a `<!-- transcript: NAME -->` marker at lines {unmarked:?}"
    );
    let norm = Normalizer::new();
    let bless = std::env::var_os("README_BLESS").is_some();
    let sb = Sandbox::new();
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut blessed: Vec<(usize, Vec<String>)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for block in &blocks {
        let Some(name) = block.name.clone() else {
            continue;
        };
        if EXTERNAL.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if skipped.contains(&name) {
            continue;
        }
        let missing = missing_tools(&block.body);
        if !missing.is_empty() {
            println!(
                "SKIPPED: README transcript {name:?}: {} not installed",
                missing.join(", ")
            );
            skipped.push(name);
            continue;
        }
        let session = sessions
            .entry(name.clone())
            .or_insert_with(|| Session::new(&name, &sb));
        let mut new_body = Vec::new();
        let mut differs = false;
        for step in steps(&block.body) {
            let got = session.run(&step);
            new_body.push(format!("$ {}", step.cmd));
            new_body.extend(got.iter().cloned());
            let want: Vec<String> = step.expected.iter().map(|l| norm.apply(l)).collect();
            let have: Vec<String> = got.iter().map(|l| norm.apply(l)).collect();
            if want != have {
                differs = true;
                failures.push(format!(
                    "README.md line {} ({name}): `$ {}`\n--- README shows (normalized):\n{}\n--- it printed:\n{}\n",
                    block.line,
                    step.cmd,
                    want.join("\n"),
                    got.join("\n")
                ));
            }
        }
        // Blessing rewrites only what changed, so the README's other
        // blocks keep their values (and merges stay small).
        if differs {
            blessed.push((block.line, new_body));
        }
    }
    drop(sessions);
    if bless {
        let mut lines: Vec<String> = readme.lines().map(str::to_string).collect();
        // From the end, so earlier line numbers stay valid.
        for (line, body) in blessed.into_iter().rev() {
            let start = line; // the line after the opening fence (0-based)
            let end = (start..lines.len())
                .find(|&i| lines[i].starts_with("```"))
                .expect("closing fence");
            lines.splice(start..end, body);
        }
        std::fs::write(&readme_path, lines.join("\n") + "\n").expect("write README.md");
        println!("README.md blessed; review `git diff README.md`");
        return;
    }
    assert!(
        failures.is_empty(),
        "README transcripts differ from what the commands print (README_BLESS=1 rewrites them):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_external_transcript_exists() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let blocks = readme_blocks(&readme);
    for (name, test) in EXTERNAL {
        assert!(
            blocks.iter().any(|b| b.name.as_deref() == Some(name)),
            "README.md has no transcript {name:?} (checked by {test})"
        );
    }
}
