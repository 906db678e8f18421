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

use tokio_tungstenite::tungstenite;

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

/// A Chrome DevTools Protocol session with one page: calls answered in
/// order, events skipped.
pub struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    /// Call `method` and return its `result` (panics on an error).
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        loop {
            let m = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
            if v["id"] != id {
                continue; // an event
            }
            if !v["error"].is_null() {
                panic!("DevTools {method}: {}", v["error"]);
            }
            return v["result"].clone();
        }
    }

    /// Evaluate `expr` in the page; its value as JSON (null if it threw).
    pub fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Go to `url` and wait until the document has loaded.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({"url": url}));
        let mut state = serde_json::Value::Null;
        crate::wait_until(Duration::from_secs(30), &format!("{url} loaded"), || {
            state = self.eval("document.readyState + ' ' + location.href");
            state
                .as_str()
                .is_some_and(|s| s.starts_with("complete") && !s.ends_with("about:blank"))
        });
    }

    /// Type `text` into the focused element, as a keyboard would.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", serde_json::json!({"text": text}));
    }

    /// Press Enter.
    pub fn enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                serde_json::json!({
                    "type": kind, "key": "Enter", "code": "Enter",
                    "windowsVirtualKeyCode": 13, "text": "\r"
                }),
            );
        }
    }

    /// A PNG of the page as shown.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        base64_decode(r["data"].as_str().unwrap_or_default())
    }
}

/// Standard base64, as DevTools sends screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
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
    profile: tempfile::TempDir,
}

impl Browser {
    /// Start `bin` on `url` with a fresh profile; its output goes to a log
    /// file next to the profile.
    pub fn open(bin: &Path, url: &str) -> Browser {
        Self::open_with(bin, url, &[])
    }

    /// [`Browser::open`] that can be driven through the DevTools protocol
    /// ([`Browser::devtools`]), in a window of a fixed size.
    pub fn open_driven(bin: &Path, url: &str) -> Browser {
        Self::open_with(
            bin,
            url,
            &["--remote-debugging-port=0", "--window-size=1280,860"],
        )
    }

    fn open_with(bin: &Path, url: &str, extra: &[&str]) -> Browser {
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
        .args(extra)
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
            profile,
        }
    }

    /// A DevTools connection to the browser's page (started with
    /// [`Browser::open_driven`]).
    pub fn devtools(&self) -> Cdp {
        // Chromium writes the port it took (port 0) to this file.
        let file = self.profile.path().join("data").join("DevToolsActivePort");
        let mut port = None;
        crate::wait_until(Duration::from_secs(30), "chromium's DevTools port", || {
            port = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u16>().ok()));
            port.is_some()
        });
        let addr = format!("127.0.0.1:{}", port.unwrap_or(0));
        let mut page_ws = None;
        crate::wait_until(Duration::from_secs(30), "chromium's page target", || {
            let list = crate::http::get(&addr, "/json/list", &[]);
            let v: serde_json::Value = serde_json::from_str(&list.body).unwrap_or_default();
            page_ws = v.as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
            });
            page_ws.is_some()
        });
        let url = page_ws.unwrap_or_default();
        let (ws, _) = tungstenite::connect(url.as_str())
            .unwrap_or_else(|e| panic!("DevTools {url}: {e}\n{}", self.log()));
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        }
        Cdp { ws, next: 0 }
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
