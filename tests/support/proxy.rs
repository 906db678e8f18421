//! A fault-injecting TCP proxy for the end-to-end tests: it forwards a
//! loopback port to a target port and cuts each connection at a random
//! moment (after a random number of bytes, often mid-frame, or a random
//! time), drawn from a seeded generator.
//!
//! The seed is printed when the proxy starts, so a failing run shows it;
//! `PROXY_SEED=<seed>` replays the same cut schedule (thread timing still
//! varies, the budgets do not).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How hard the proxy cuts: each connection gets a byte budget and a time
/// budget drawn uniformly from these ranges, and is cut at the first one
/// spent.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub bytes: (u64, u64),
    pub millis: (u64, u64),
    /// Forward at most this many bytes per second each way (a slow link);
    /// `None`: as fast as it goes.
    pub rate: Option<u64>,
}

impl Faults {
    /// No cuts, only a slow link of `bytes_per_sec` each way.
    pub fn slow(bytes_per_sec: u64) -> Faults {
        Faults {
            bytes: (u64::MAX, u64::MAX),
            millis: (u64::MAX / 4, u64::MAX / 4),
            rate: Some(bytes_per_sec),
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            // Mostly more than a 256 KiB batch, so sessions make progress;
            // sometimes less, so frames are cut in the middle.
            bytes: (4 << 10, 768 << 10),
            millis: (20, 200),
            rate: None,
        }
    }
}

/// The seed for this run: `PROXY_SEED` if set, else random.
pub fn seed() -> u64 {
    std::env::var("PROXY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    pub port: u16,
    pub seed: u64,
    shared: Arc<Shared>,
}

struct Shared {
    target: u16,
    faults: Faults,
    rng: Mutex<StdRng>,
    cutting: AtomicBool,
    stop: AtomicBool,
    cuts: AtomicU64,
    connections: AtomicU64,
}

impl Proxy {
    /// Forward a fresh loopback port to `127.0.0.1:target`.
    pub fn start(target: u16, seed: u64, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        eprintln!("fault proxy :{port} -> :{target}, seed {seed} (replay with PROXY_SEED={seed})");
        let shared = Arc::new(Shared {
            target,
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            cutting: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            cuts: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept(listener, s));
        Proxy { port, seed, shared }
    }

    /// Connections cut by the proxy so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stop (or resume) cutting; connections are forwarded either way.
    pub fn set_cutting(&self, on: bool) {
        self.shared.cutting.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.target)) else {
            continue; // the target is down: the dialler sees a closed connection
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let (bytes, millis) = {
            let mut rng = shared.rng.lock().unwrap_or_else(|p| p.into_inner());
            let f = shared.faults;
            (
                rng.random_range(f.bytes.0..=f.bytes.1),
                rng.random_range(f.millis.0..=f.millis.1),
            )
        };
        let conn = Arc::new(Conn {
            client,
            server,
            budget: AtomicU64::new(bytes),
            deadline: Instant::now()
                .checked_add(Duration::from_millis(millis))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)),
            cut: AtomicBool::new(false),
        });
        for up in [true, false] {
            let (c, s) = (conn.clone(), shared.clone());
            std::thread::spawn(move || pump(&c, &s, up));
        }
    }
}

/// One forwarded connection.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    /// Bytes (both directions) left before the cut.
    budget: AtomicU64,
    deadline: Instant,
    cut: AtomicBool,
}

impl Conn {
    fn cut(&self, shared: &Shared) {
        if !self.cut.swap(true, Ordering::SeqCst) {
            shared.cuts.fetch_add(1, Ordering::SeqCst);
        }
        self.close();
    }

    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// Copy one direction until either side closes or the budget is spent.
fn pump(conn: &Conn, shared: &Shared, up: bool) {
    let (mut from, mut to) = if up {
        (&conn.client, &conn.server)
    } else {
        (&conn.server, &conn.client)
    };
    let _ = from.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = vec![0u8; 16 << 10];
    let (started, mut forwarded) = (Instant::now(), 0u64);
    loop {
        if let Some(rate) = shared.faults.rate {
            // A token bucket of one: wait until what went through fits
            // the rate (this is the link being slow, not a test waiting).
            let due = Duration::from_secs_f64(forwarded as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let cutting = shared.cutting.load(Ordering::SeqCst);
        if conn.cut.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            conn.close();
            return;
        }
        if cutting && Instant::now() >= conn.deadline {
            conn.cut(shared);
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                conn.close();
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => {
                conn.close();
                return;
            }
        };
        let mut n = n as u64;
        let mut spent = false;
        if cutting {
            let left = conn
                .budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                    Some(b.saturating_sub(n))
                })
                .unwrap_or(0);
            if left <= n {
                // Forward only what is left, then cut: mid-frame, usually.
                n = left;
                spent = true;
            }
        }
        if to.write_all(&buf[..n as usize]).is_err() {
            conn.close();
            return;
        }
        forwarded += n;
        if spent {
            conn.cut(shared);
            return;
        }
    }
}
