//! A handshake flood: hundreds of slow, unauthenticated connections from
//! other addresses, refilled as they are closed, on a's listener while
//! the link is cut. The peer gets back in within seconds and nothing is
//! lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peerlink_e2e::{Daemon, Sandbox, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const LONG: Duration = Duration::from_secs(30);
/// Slow connections held open at once.
const FLOOD: usize = 300;
/// They come from these loopback addresses (a peer is at 127.0.0.1).
const FLOOD_ADDRS: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];

/// The flood: each of [`FLOOD`] tasks opens a connection from one of
/// [`FLOOD_ADDRS`], starts an upgrade request and adds a header byte now
/// and then, never finishing; when a closes it, it connects again.
struct Flood {
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicU64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Flood {
    fn start(target: u16) -> Flood {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicU64::new(0));
        for i in 0..FLOOD {
            let from: SocketAddr = format!("{}:0", FLOOD_ADDRS[i % FLOOD_ADDRS.len()])
                .parse()
                .expect("address");
            let to: SocketAddr = format!("127.0.0.1:{target}").parse().expect("address");
            let (stop, connects) = (stop.clone(), connects.clone());
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(sock) = TcpSocket::new_v4() else {
                        return;
                    };
                    if sock.bind(from).is_err() {
                        return;
                    }
                    let Ok(mut s) = sock.connect(to).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    let _ = s
                        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                        .await;
                    let mut buf = [0u8; 256];
                    // A byte every 300 ms until a closes the connection.
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(_)) => {}
                            Err(_) => {
                                if s.write_all(b"x").await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
        }
        Flood {
            stop,
            connects,
            rt: Some(rt),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Whether this host lets us connect from 127.0.0.2 (Linux does).
fn other_loopback_addresses_work() -> bool {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let to = l.local_addr().expect("addr");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let Ok(s) = TcpSocket::new_v4() else {
            return false;
        };
        let from: SocketAddr = "127.0.0.2:0".parse().expect("address");
        s.bind(from).is_ok() && s.connect(to).await.is_ok()
    })
}

#[test]
fn a_peer_gets_back_in_under_a_handshake_flood_from_other_addresses() {
    if !other_loopback_addresses_work() {
        println!("SKIPPED: cannot connect from 127.0.0.2 on this host");
        return;
    }
    let sb = Sandbox::new();
    let (a_port, b_port) = (free_port(), free_port());
    // a cannot dial b (b's url is a closed port): the link only comes up
    // through a's listener, the one the flood is on.
    let a = sb.spec(
        "a",
        &Sandbox::config("a", a_port, &[("b", free_port())], ""),
    );
    let b = sb.spec("b", &Sandbox::config("b", b_port, &[("a", a_port)], ""));
    let a = Daemon::start(&a);
    let mut bd = Daemon::start(&b);
    a.wait_connected("b");
    a.send(&["m0"]);
    bd.wait(LONG, "b has m0", |b| b.bodies() == ["m0"]);

    bd.kill();
    a.wait(LONG, "a sees b gone", |a| {
        a.peer("b")["state"] != "connected"
    });
    let flood = Flood::start(a_port);
    // Full: a closes connections to make room, and the flood refills.
    a.wait(LONG, "the flood fills a's pending handshakes", |_| {
        flood.connects.load(Ordering::Relaxed) > 2 * FLOOD as u64
    });
    // Queued while b is away.
    let queued: Vec<String> = (1..=100).map(|i| format!("m{i}")).collect();
    let args: Vec<&str> = queued.iter().map(String::as_str).collect();
    a.send(&args);

    let restarted = Instant::now();
    let bd = Daemon::start(&b);
    a.wait(LONG, "b gets back in through the flood", |a| {
        a.peer("b")["state"] == "connected"
    });
    let took = restarted.elapsed();
    let refills = flood.connects.load(Ordering::Relaxed);
    // "Within a few seconds" (b redials every 300 ms at most); generous
    // for a loaded machine, far below the flood's lifetime.
    assert!(
        took < Duration::from_secs(10),
        "b took {took:?} to get back in ({refills} flood connections so far); a's log:\n{}",
        a.spec.log()
    );
    let mut want = vec!["m0".to_string()];
    want.extend(queued);
    bd.wait(LONG, "b has every message once, in order", |b| {
        b.bodies().len() >= want.len()
    });
    assert_eq!(bd.bodies(), want);
    let later = flood.connects.load(Ordering::Relaxed);
    assert!(
        later > FLOOD as u64,
        "the flood was refilled (connections: {later})"
    );
    println!("b back in after {took:?}; flood connections made: {later}");
    // One line about the flood, not one per connection.
    let lines = a.spec.log().matches("pending handshakes full").count();
    assert!(lines <= 2, "{lines} log lines about the flood");
    drop(flood);
}
