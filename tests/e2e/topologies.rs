//! More than two, whatever breaks (issue 15): four nodes in a full mesh and
//! a hub with four spokes, every link through a fault-injecting proxy that
//! cuts it at random moments, while every node sends broadcast and
//! addressed messages and nodes are killed with SIGKILL and restarted.
//! At the end every (origin, destination) inbox holds each of its messages
//! exactly once, in order, and nothing addressed elsewhere.
//!
//! One seed drives the proxies and the plan (what is sent to whom, who is
//! killed when); it is printed, and `PROXY_SEED=<seed>` replays the plan
//! (thread timing still varies).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use peerlink_e2e::proxy::{self, Faults, Proxy};
use peerlink_e2e::{Daemon, Sandbox, Spec, Value, ctl_cmd, free_port, wait_until};

/// Quick redials, so links cut many times a second still move.
const TIMERS: &str = r#"
heartbeat = "200ms"
dead_after = "2s"
handshake_timeout = "2s"
backoff_min = "5ms"
backoff_max = "50ms"
"#;

/// Rounds of sending, each ending with a kill and a restart.
const ROUNDS: usize = 5;
/// Messages in one batch (one `peerctl send` from stdin).
const BATCH: usize = 400;
/// ~100-byte bodies, so a batch spans several TCP segments and cuts land
/// mid-frame.
const PAD: &str = "through-links-cut-at-random-moments-and-nodes-killed-with-sigkill";

/// Nodes linked as `edges` say, each listening behind its own cutting
/// proxy (every peer dials it through that proxy).
struct Net {
    names: Vec<String>,
    specs: Vec<Spec>,
    nodes: Vec<Option<Daemon>>,
    proxies: Vec<Proxy>,
    /// Who each node is linked to (indices).
    peers: Vec<Vec<usize>>,
    /// What each (origin, destination) inbox must hold, in order.
    expected: BTreeMap<(usize, usize), Vec<String>>,
    rng: StdRng,
    seed: u64,
    started: Instant,
    kills: usize,
    /// Kills of a node that still had messages queued for a peer.
    kills_mid_stream: usize,
    _sb: Sandbox,
}

impl Net {
    fn new(names: &[&str], edges: &[(usize, usize)]) -> Net {
        let seed = proxy::seed();
        eprintln!("topology seed {seed} (replay with PROXY_SEED={seed})");
        let sb = Sandbox::new();
        let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let faults = Faults::default();
        let proxies: Vec<Proxy> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| Proxy::start(*p, seed.wrapping_add(1 + i as u64), faults))
            .collect();
        let mut peers = vec![Vec::new(); names.len()];
        for &(x, y) in edges {
            peers[x].push(y);
            peers[y].push(x);
        }
        let specs: Vec<Spec> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let list: Vec<(&str, u16)> = peers[i]
                    .iter()
                    .map(|&j| (names[j], proxies[j].port))
                    .collect();
                sb.spec(n, &Sandbox::config_timers(n, ports[i], &list, TIMERS, ""))
            })
            .collect();
        let nodes = specs.iter().map(|s| Some(Daemon::start(s))).collect();
        Net {
            names: names.iter().map(|n| n.to_string()).collect(),
            specs,
            nodes,
            proxies,
            peers,
            expected: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            seed,
            started: Instant::now(),
            kills: 0,
            kills_mid_stream: 0,
            _sb: sb,
        }
    }

    fn node(&self, i: usize) -> &Daemon {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// One batch from `origin`, to `to` or to every peer (empty `to`);
    /// what each destination must now hold more of is recorded.
    fn send(&mut self, origin: usize, to: &[usize], tag: &str) {
        let plan = Plan::of(self, origin);
        match plan.batch(to, tag) {
            Ok(sent) => self.record(origin, sent),
            Err(e) => self.fail(&e),
        }
    }

    fn record(&mut self, origin: usize, (dests, bodies): Sent) {
        for d in dests {
            self.expected
                .entry((origin, d))
                .or_default()
                .extend(bodies.iter().cloned());
        }
    }

    /// Every running node sends a broadcast batch and a batch to a random
    /// non-empty set of its peers (down ones included).
    fn send_round(&mut self, tag: &str) {
        let mut order: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        order.shuffle(&mut self.rng);
        for i in order {
            let to = Plan::of(self, i).some_peers(&mut self.rng);
            if self.rng.random_bool(0.5) {
                self.send(i, &[], &format!("{tag}b"));
                self.send(i, &to, &format!("{tag}a"));
            } else {
                self.send(i, &to, &format!("{tag}a"));
                self.send(i, &[], &format!("{tag}b"));
            }
        }
    }

    /// Kill `victims` while every other node streams batches (to them
    /// too), keep streaming while they are down, restart them, stream a
    /// little more.
    fn kill_while_streaming(&mut self, victims: &[usize], tag: &str) {
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(AtomicU64::new(0));
        let senders: Vec<usize> = (0..self.names.len())
            .filter(|i| !victims.contains(i))
            .collect();
        let threads: Vec<_> = senders
            .iter()
            .map(|&i| {
                let plan = Plan::of(self, i);
                let mut rng = StdRng::seed_from_u64(self.rng.random());
                let (stop, batches, tag) = (stop.clone(), batches.clone(), tag.to_string());
                std::thread::spawn(move || {
                    let mut sent = Vec::new();
                    for k in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let to = if rng.random_bool(0.5) {
                            Vec::new()
                        } else {
                            plan.some_peers(&mut rng)
                        };
                        match plan.batch(&to, &format!("{tag}s{k}")) {
                            Ok(b) => sent.push(b),
                            Err(e) => {
                                // End the waits at once: the join reports it.
                                batches.store(u64::MAX / 2, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                        batches.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, String>(sent)
                })
            })
            .collect();
        let n = senders.len() as u64;
        self.streamed(&batches, n);
        self.kill(victims);
        self.streamed(&batches, 2 * n);
        self.restart(victims);
        self.streamed(&batches, n);
        stop.store(true, Ordering::SeqCst);
        for (&i, t) in senders.iter().zip(threads) {
            match t.join().expect("sender thread") {
                Ok(sent) => {
                    for s in sent {
                        self.record(i, s);
                    }
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    /// Wait until the senders have stored `more` batches.
    fn streamed(&self, batches: &AtomicU64, more: u64) {
        let target = batches.load(Ordering::SeqCst) + more;
        self.wait(Duration::from_secs(30), "batches stream", || {
            batches.load(Ordering::SeqCst) >= target
        });
    }

    /// SIGKILL `victims` (while the rest is still being delivered).
    fn kill(&mut self, victims: &[usize]) {
        for &v in victims {
            // Something queued from or for it: the kill lands mid-stream.
            let queued = |i: usize, peer: Option<&str>| {
                self.node(i).status()["peers"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| peer.is_none_or(|n| p["name"] == n) && p["queued_msgs"] != 0)
                })
            };
            let mid = queued(v, None)
                || self.peers[v]
                    .iter()
                    .any(|&u| self.nodes[u].is_some() && queued(u, Some(&self.names[v])));
            self.kills_mid_stream += usize::from(mid);
            self.kills += 1;
            if let Some(mut d) = self.nodes[v].take() {
                d.kill();
            }
        }
    }

    fn restart(&mut self, victims: &[usize]) {
        for &v in victims {
            self.nodes[v] = Some(Daemon::start(&self.specs[v]));
        }
    }

    /// Every queue empty on every node: each peer acknowledged (stored)
    /// everything addressed to it.
    fn drained(&self) -> bool {
        (0..self.names.len()).all(|i| {
            let st = self.node(i).status();
            st["peers"].as_array().is_some_and(|ps| {
                ps.len() == self.peers[i].len() && ps.iter().all(|p| p["queued_msgs"] == 0)
            })
        })
    }

    /// `what` holds within `timeout`, or the test fails with the logs.
    fn wait(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(timeout, what, cond)
        }));
        if let Err(e) = r {
            self.dump();
            std::panic::resume_unwind(e);
        }
    }

    fn fail(&self, why: &str) -> ! {
        self.dump();
        panic!("{why} ({})", self.report());
    }

    fn report(&self) -> String {
        let cuts: u64 = self.proxies.iter().map(Proxy::cuts).sum();
        let conns: u64 = self.proxies.iter().map(Proxy::connections).sum();
        let delivered: usize = self.expected.values().map(Vec::len).sum();
        format!(
            "seed {}; {delivered} deliveries; {conns} connections, {cuts} cut; {} kills ({} \
             mid-stream); {:?}",
            self.seed,
            self.kills,
            self.kills_mid_stream,
            self.started.elapsed()
        )
    }

    /// The end of each log (they are long: every cut is in them).
    fn dump(&self) {
        eprintln!("{}", self.report());
        for s in &self.specs {
            let log = s.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("--- end of the log of {} ---\n{}", s.name, tail.join("\n"));
        }
    }

    /// Each node's inbox, per origin, is exactly what was sent to it, once,
    /// in order (strictly rising `origin_seq`), and holds nothing else.
    fn check(&self) {
        for d in 0..self.names.len() {
            let inbox = self.node(d).inbox();
            let mut got: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
            for e in &inbox {
                got.entry(e["origin"].as_str().unwrap_or("?").to_string())
                    .or_default()
                    .push(e);
            }
            let origins: BTreeSet<String> = self.peers[d]
                .iter()
                .map(|&o| self.names[o].clone())
                .collect();
            for o in got.keys() {
                if !origins.contains(o) {
                    self.fail(&format!("{} holds messages from {o}", self.names[d]));
                }
            }
            for &o in &self.peers[d] {
                let entries = got.get(&self.names[o]).cloned().unwrap_or_default();
                let seqs: Vec<u64> = entries
                    .iter()
                    .map(|e| e["origin_seq"].as_u64().unwrap_or(0))
                    .collect();
                if let Some(w) = seqs.windows(2).find(|w| w[1] <= w[0]) {
                    self.fail(&format!(
                        "{}'s inbox from {}: origin_seq {} after {} (a repeat or out of order)",
                        self.names[d], self.names[o], w[1], w[0]
                    ));
                }
                let bodies: Vec<&str> = entries
                    .iter()
                    .map(|e| e["body"].as_str().unwrap_or(""))
                    .collect();
                let want = self.expected.get(&(o, d)).cloned().unwrap_or_default();
                // The counter is rebuilt from the same records after a
                // kill: skip notices and resends count nothing.
                let counted = self.node(d).peer(&self.names[o])["msgs_received"].as_u64();
                if counted != Some(want.len() as u64) {
                    self.fail(&format!(
                        "{} counts {counted:?} messages received from {}, {} expected",
                        self.names[d],
                        self.names[o],
                        want.len()
                    ));
                }
                if bodies != want {
                    let first = bodies
                        .iter()
                        .zip(&want)
                        .position(|(g, w)| g != w)
                        .unwrap_or(bodies.len().min(want.len()));
                    self.fail(&format!(
                        "{}'s inbox from {}: {} messages, {} expected; first difference at {first}: \
                         got {:?}, want {:?}",
                        self.names[d],
                        self.names[o],
                        bodies.len(),
                        want.len(),
                        bodies.get(first),
                        want.get(first)
                    ));
                }
            }
        }
    }

    /// Rounds of sending with cuts; after each, kill one or two nodes mid-
    /// stream, send again from the others (to them too), restart them.
    /// `victims` picks who dies in a round.
    fn run(&mut self, mut victims: impl FnMut(&mut StdRng, usize) -> Vec<usize>) {
        for round in 0..ROUNDS {
            self.send_round(&format!("r{round}"));
            let v = victims(&mut self.rng, round);
            self.kill_while_streaming(&v, &format!("r{round}k"));
        }
        self.send_round("end");
        let cuts: u64 = self.proxies.iter().map(Proxy::cuts).sum();
        // The links stop being cut, so the end comes soon.
        for p in &self.proxies {
            p.set_cutting(false);
        }
        self.wait(Duration::from_secs(60), "every queue drains", || {
            self.drained()
        });
        self.check();
        eprintln!("{}", self.report());
        assert!(
            cuts >= ROUNDS as u64,
            "the links were cut only {cuts} times"
        );
        assert!(
            self.kills_mid_stream >= 1,
            "no kill landed with messages queued ({})",
            self.report()
        );
    }
}

/// What was sent in one batch: to whom, and the bodies in order.
type Sent = (Vec<usize>, Vec<String>);

/// How one node sends, detached from [`Net`] so a thread can do it.
struct Plan {
    origin: String,
    socket: std::path::PathBuf,
    /// (index, name) of its peers.
    peers: Vec<(usize, String)>,
}

impl Plan {
    fn of(net: &Net, origin: usize) -> Plan {
        Plan {
            origin: net.names[origin].clone(),
            socket: net.specs[origin].socket.clone(),
            peers: net.peers[origin]
                .iter()
                .map(|&j| (j, net.names[j].clone()))
                .collect(),
        }
    }

    /// A random non-empty set of the peers, in index order.
    fn some_peers(&self, rng: &mut StdRng) -> Vec<usize> {
        let mut to: Vec<usize> = self.peers.iter().map(|p| p.0).collect();
        to.shuffle(rng);
        to.truncate(rng.random_range(1..=to.len()));
        to.sort_unstable();
        to
    }

    fn name(&self, j: usize) -> &str {
        self.peers
            .iter()
            .find(|p| p.0 == j)
            .map(|p| p.1.as_str())
            .unwrap_or("?")
    }

    /// `peerctl send [--to ...]` of [`BATCH`] lines on stdin; each body
    /// names its origin and where it is addressed (`*`: every peer).
    fn batch(&self, to: &[usize], tag: &str) -> Result<Sent, String> {
        let dests: Vec<usize> = if to.is_empty() {
            self.peers.iter().map(|p| p.0).collect()
        } else {
            to.to_vec()
        };
        let list: Vec<&str> = to.iter().map(|&j| self.name(j)).collect();
        let label = if to.is_empty() {
            "*".to_string()
        } else {
            list.join("+")
        };
        let bodies: Vec<String> = (0..BATCH)
            .map(|k| format!("{}>{label}:{tag}.{k:04}:{PAD}", self.origin))
            .collect();
        let mut cmd = ctl_cmd(&self.socket);
        cmd.arg("send");
        if !to.is_empty() {
            cmd.args(["--to", &list.join(",")]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn peerctl send: {e}"))?;
        let input: String = bodies.iter().map(|b| format!("{b}\n")).collect();
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child
            .wait_with_output()
            .map_err(|e| format!("peerctl send: {e}"))?;
        let _ = writer.join();
        if !out.status.success() {
            return Err(format!(
                "send from {} to {label} failed: {}",
                self.origin,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok((dests, bodies))
    }
}

#[test]
fn a_full_mesh_of_four_delivers_each_pair_exactly_once_through_cuts_and_kills() {
    let edges = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];
    let mut net = Net::new(&["a", "b", "c", "d"], &edges);
    net.run(|rng, _| {
        // One node, or two at once.
        let mut all = vec![0, 1, 2, 3];
        all.shuffle(rng);
        all.truncate(rng.random_range(1..=2));
        all
    });
}

#[test]
fn a_hub_with_four_spokes_delivers_each_pair_exactly_once_through_cuts_and_kills() {
    let edges = [(0, 1), (0, 2), (0, 3), (0, 4)];
    let mut net = Net::new(&["h", "b", "c", "d", "e"], &edges);
    net.run(|rng, round| match round {
        // The hub, with what it sent and what the spokes sent it in flight.
        0 => vec![0],
        // The hub and a spoke at once.
        1 => vec![0, *[1, 2, 3, 4].choose(rng).unwrap_or(&1)],
        _ => vec![rng.random_range(0..5)],
    });
}
