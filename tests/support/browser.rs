//! A real browser for the tests of what a web page can do to a node
//! (`tests/e2e/browser.rs`): a tiny HTTP server that serves one page and
//! collects what the page reports back, and a headless Chromium that opens
//! it.
//!
//! The page reports by fetching `/report?<text>` from its own server, so
//! the test waits on reports with a deadline instead of reading the DOM
//! once. Chromium runs with the flags this machine needs (no sandbox as
//! root, no GPU, no background networking: the network is closed) and a
//! fresh profile, in its own process group, which is ended on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Debian's `chromium` (or `chromium-browser`) on `PATH`, if installed.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Serves `page` at `/` and turns each `GET /report?<text>` into a report.
pub struct PageServer {
    /// `http://host:port`, the origin of the page as the browser sends it.
    pub origin: String,
    reports: mpsc::Receiver<String>,
    /// Every report so far, in arrival order.
    pub seen: Vec<String>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl PageServer {
    /// Listen on 127.0.0.2 (another address than the node's, standing in
    /// for any web site), or on 127.0.0.1 where that address is missing:
    /// another port is another origin all the same.
    pub fn start(page: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.2:0")
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .expect("bind the page server");
        let addr = listener.local_addr().expect("page server address");
        let (tx, reports) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let page = Arc::new(page);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (tx, page) = (tx.clone(), page.clone());
                // One thread each: the browser may open a connection and
                // send nothing on it for a while (preconnect).
                std::thread::spawn(move || serve(conn, &page, &tx));
            }
        });
        PageServer {
            origin: format!("http://{addr}"),
            reports,
            seen: Vec::new(),
            stop,
            addr,
        }
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("{}/", self.origin)
    }

    /// Wait until a report satisfies `pred`; returns it. Panics after
    /// `timeout` with every report seen and `context` (the browser's log).
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        context: impl Fn() -> String,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        if let Some(r) = self.seen.iter().find(|r| pred(r)) {
            return r.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(r) => {
                    self.seen.push(r.clone());
                    if pred(&r) {
                        return r;
                    }
                }
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for the page to report {what}; it reported {:?}\n--- browser log ---\n{}",
                    self.seen,
                    context()
                ),
            }
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answer one HTTP/1.1 request and close.
fn serve(conn: TcpStream, page: &str, reports: &mpsc::Sender<String>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let (status, body) = if target == "/" {
        ("200 OK", page.to_string())
    } else if let Some(q) = target.strip_prefix("/report?") {
        let _ = reports.send(percent_decode(q));
        ("204 No Content", String::new())
    } else {
        ("404 Not Found", String::new())
    };
    let mut out = &conn;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Undo `encodeURIComponent`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A headless Chromium showing one page, ended on drop.
pub struct Browser {
    child: Child,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start `bin` on `url` with a fresh profile; its output goes to a log
    /// file next to the profile.
    pub fn open(bin: &Path, url: &str) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("plcr")
            .tempdir()
            .expect("profile dir");
        let log = profile.path().join("chromium.log");
        let out = std::fs::File::create(&log).expect("browser log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("data").display()
        ))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().expect("start chromium");
        Browser {
            child,
            log,
            _profile: profile,
        }
    }

    /// What the browser printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGTERM lets Chromium end its own helper processes; whatever is
        // left after a few seconds goes with its process group.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}
