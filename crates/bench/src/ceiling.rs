//! The machine's ceiling: a bare tokio-tungstenite stream over loopback
//! moving the same messages, no journal, no control socket. Every
//! throughput number is also reported as a ratio to this, measured in the
//! same run, so the ratios hold on a noisy machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Messages per flush in the batched ceiling.
pub const BATCH: u64 = 1024;

/// Move `n` binary messages of `size` bytes; returns the elapsed time.
pub async fn run(size: usize, n: u64, batch: u64) -> Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let mut ws = tokio_tungstenite::accept_async(tcp).await?;
        let mut got = 0u64;
        while got < n {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => got += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => break,
            }
        }
        anyhow::Ok((got, Instant::now()))
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp).await?;
    let body = bytes_of(size);
    let start = Instant::now();
    for i in 0..n {
        ws.feed(Message::Binary(body.clone())).await?;
        if (i + 1) % batch == 0 {
            ws.flush().await?;
        }
    }
    ws.flush().await?;
    let (got, end) = server.await.context("ceiling server")??;
    anyhow::ensure!(got == n, "ceiling: {got} of {n} arrived");
    let _ = ws.close(None).await;
    Ok(end - start)
}

fn bytes_of(size: usize) -> tokio_tungstenite::tungstenite::Bytes {
    vec![b'x'; size].into()
}

/// The disk's ceiling for a durable journal: sequential writes of `total`
/// bytes in `block`-sized writes with one `fdatasync` per `group` bytes
/// (group commit), in `dir` (the same file system the daemons use).
/// Returns bytes/s. Both daemons of a pair journal every message on the
/// same disk, so durable end-to-end MB/s on one machine is bounded by
/// about half of this.
pub fn disk(dir: &std::path::Path, total: u64, block: usize, group: u64) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("disk-ceiling");
    let mut f = std::fs::File::create(&path)?;
    let buf = vec![b'x'; block];
    let start = Instant::now();
    let mut written = 0u64;
    let mut since_sync = 0u64;
    while written < total {
        f.write_all(&buf)?;
        written += block as u64;
        since_sync += block as u64;
        if since_sync >= group {
            f.sync_data()?;
            since_sync = 0;
        }
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(written as f64 / secs)
}

/// The disk's floor for durable latency: `n` appends of 100 bytes, each
/// followed by `fdatasync`, paced like the latency runs. Returns the
/// fdatasync times in ms, sorted. A message sent end to end on one machine
/// waits for two of these in series (the sender's outbox, then the
/// receiver's inbox), on the same disk.
pub fn fsync_latencies(dir: &std::path::Path, n: usize) -> Result<Vec<f64>> {
    use std::io::Write;
    let path = dir.join("fsync-latency");
    let mut f = std::fs::File::create(&path)?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        f.write_all(&[b'x'; 100])?;
        let t = Instant::now();
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_micros(100));
    }
    drop(f);
    std::fs::remove_file(&path)?;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}
