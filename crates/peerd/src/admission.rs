//! Admission of connections to the listener's pending-handshake slots
//! (`max_pending_handshakes`), so that a flood of slow, unauthenticated
//! connections can never keep a configured peer out.
//!
//! A connection holds a slot from `accept` until its handshake is done
//! (or `handshake_timeout`). Connections are never refused at the door;
//! when there is no room, a pending handshake is evicted (closed) instead:
//!
//! 1. A source (an IPv4 address, or an IPv6 /64) holds at most
//!    [`per_source`] slots. A new connection from a source at its share
//!    evicts that source's oldest pending handshake.
//! 2. When every slot is taken, a new connection evicts the oldest pending
//!    handshake of the source holding the most slots.
//!
//! So a flood from other sources costs only those sources' slots, and a
//! peer's handshake (one slot from its source) is never the one evicted
//! while a flooding source holds more; a flood from the peer's own address
//! still leaves the newest connection the time the flood needs to cycle
//! through that source's share. Every connection still gets at most
//! `handshake_timeout`.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Where connections come from, for fairness: one address for IPv4, the
/// /64 network for IPv6 (what one host usually has to itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Source::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            Source::V6(net) => {
                write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(net) << 64))
            }
        }
    }
}

/// How many of `slots` one source may hold: a quarter, at least one.
pub fn per_source(slots: usize) -> usize {
    (slots / 4).max(1)
}

/// The listener's pending-handshake slots.
pub struct Admission {
    slots: usize,
    per_source: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    next_id: u64,
    /// Pending handshakes, oldest first.
    pending: VecDeque<Pending>,
}

struct Pending {
    id: u64,
    source: Source,
    evict: CancellationToken,
}

/// A slot held by one connection until dropped. [`Ticket::evicted`]
/// fires when a newer connection took it.
pub struct Ticket {
    id: u64,
    admission: Arc<Admission>,
    evicted: CancellationToken,
}

impl Ticket {
    /// Resolves when this handshake was evicted: stop it and close.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        if let Some(i) = inner.pending.iter().position(|p| p.id == self.id) {
            inner.pending.remove(i);
        }
    }
}

/// Which pending handshake a new connection displaced, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// Its source was at its share of the slots.
    SourceFull { source: Source, held: usize },
    /// Every slot was taken; the busiest source lost its oldest.
    AllFull { source: Source, held: usize },
}

impl Admission {
    pub fn new(slots: usize) -> Arc<Admission> {
        let slots = slots.max(1);
        Arc::new(Admission {
            slots,
            per_source: per_source(slots),
            inner: Mutex::new(Inner {
                next_id: 0,
                pending: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is a push or a remove: a panic elsewhere cannot
        // leave it half done, so a poisoned lock is taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Give a connection from `ip` a slot, evicting a pending handshake
    /// if there is no room (see the module doc for which one).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> (Ticket, Option<Eviction>) {
        let source = Source::of(ip);
        let mut inner = self.lock();
        let held =
            |inner: &Inner, s: Source| inner.pending.iter().filter(|p| p.source == s).count();
        let mut eviction = None;
        let own = held(&inner, source);
        if own >= self.per_source {
            evict_oldest(&mut inner, source);
            eviction = Some(Eviction::SourceFull { source, held: own });
        } else if inner.pending.len() >= self.slots {
            let mut counts: Vec<(Source, usize)> = Vec::new();
            for p in &inner.pending {
                match counts.iter_mut().find(|(s, _)| *s == p.source) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((p.source, 1)),
                }
            }
            // The busiest source; of equals, the one whose oldest pending
            // handshake is oldest (`counts` is in that order, and
            // `max_by_key` keeps the last maximum, so search reversed).
            if let Some(&(busiest, n)) = counts.iter().rev().max_by_key(|(_, n)| *n) {
                evict_oldest(&mut inner, busiest);
                eviction = Some(Eviction::AllFull {
                    source: busiest,
                    held: n,
                });
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evicted = CancellationToken::new();
        inner.pending.push_back(Pending {
            id,
            source,
            evict: evicted.clone(),
        });
        drop(inner);
        let ticket = Ticket {
            id,
            admission: self.clone(),
            evicted,
        };
        (ticket, eviction)
    }

    /// Pending handshakes now.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// Evict `source`'s oldest pending handshake: out of the table now (its
/// ticket's drop finds nothing), told to stop.
fn evict_oldest(inner: &mut Inner, source: Source) {
    if let Some(i) = inner.pending.iter().position(|p| p.source == source)
        && let Some(p) = inner.pending.remove(i)
    {
        p.evict.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn is_evicted(t: &Ticket) -> bool {
        t.evicted.is_cancelled()
    }

    #[test]
    fn sources_group_ipv6_by_64_and_map_ipv4() {
        assert_eq!(
            Source::of(ip("10.0.0.1")),
            Source::of(ip("::ffff:10.0.0.1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8::1")),
            Source::of(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            Source::of(ip("2001:db8::1")),
            Source::of(ip("2001:db8:0:1::1"))
        );
        assert_eq!(Source::of(ip("2001:db8::1")).to_string(), "2001:db8::/64");
        assert_eq!(per_source(64), 16);
        assert_eq!(per_source(2), 1);
    }

    #[test]
    fn a_peer_from_another_source_gets_in_and_stays_under_a_flood() {
        let adm = Admission::new(8); // 2 per source
        let mut flood = Vec::new();
        for i in 0..100u8 {
            // Four flooding addresses, refilled without end.
            let (t, _) = adm.admit(ip(&format!("10.0.0.{}", i % 4)));
            flood.push(t);
            flood.retain(|t| !is_evicted(t));
        }
        assert_eq!(adm.pending(), 8);
        let (peer, eviction) = adm.admit(ip("192.0.2.7"));
        assert!(
            matches!(eviction, Some(Eviction::AllFull { held: 2, .. })),
            "{eviction:?}"
        );
        for i in 0..1000u32 {
            let (t, _) = adm.admit(ip(&format!("10.0.0.{}", i % 4)));
            flood.push(t);
            flood.retain(|t| !is_evicted(t));
            assert!(!is_evicted(&peer), "the peer was evicted after {i}");
        }
        assert_eq!(adm.pending(), 8);
        drop(peer);
        assert_eq!(adm.pending(), 7, "a finished handshake frees its slot");
    }

    #[test]
    fn one_source_over_its_share_evicts_its_own_oldest() {
        let adm = Admission::new(8);
        let (a1, e) = adm.admit(ip("10.0.0.1"));
        assert_eq!(e, None);
        let (a2, _) = adm.admit(ip("10.0.0.1"));
        let (other, _) = adm.admit(ip("10.0.0.2"));
        let (a3, e) = adm.admit(ip("10.0.0.1"));
        assert_eq!(
            e,
            Some(Eviction::SourceFull {
                source: Source::of(ip("10.0.0.1")),
                held: 2
            })
        );
        assert!(is_evicted(&a1) && !is_evicted(&a2) && !is_evicted(&a3));
        assert!(!is_evicted(&other));
        assert_eq!(adm.pending(), 3);
        drop(a1);
        assert_eq!(
            adm.pending(),
            3,
            "an evicted ticket's drop frees nothing twice"
        );
    }

    #[tokio::test]
    async fn eviction_wakes_the_handshake() {
        let adm = Admission::new(1);
        let (first, _) = adm.admit(ip("10.0.0.1"));
        let (_second, e) = adm.admit(ip("10.0.0.2"));
        assert!(matches!(e, Some(Eviction::AllFull { .. })));
        tokio::time::timeout(std::time::Duration::from_secs(5), first.evicted())
            .await
            .unwrap();
    }
}
