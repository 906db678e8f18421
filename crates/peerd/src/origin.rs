//! Which web pages may open a WebSocket here: the `Origin` and `Host`
//! checks the listener runs on every upgrade request, before any
//! WebSocket traffic (README "Security").
//!
//! A browser lets any page it shows open `ws://127.0.0.1:<port>/ws`, and
//! without a secret (or with `plain_clients = true`) that page could then
//! write into the inbox and read what arrives from the peer: cross-site
//! WebSocket hijacking. Browsers always send `Origin` on a WebSocket
//! upgrade and pages cannot remove or forge it, while the clients peerd is
//! for (its own dialler, websocat, Python `websockets`, Go programs,
//! tokio-tungstenite) send none. So:
//!
//! - An upgrade that carries an `Origin` is refused unless the origin is
//!   in `allowed_origins` (empty by default). This holds for peer sessions
//!   too: a page can ask for the `peerlink.v1` subprotocol, and without a
//!   secret a Hello is all a peer proves. peerd's dialler sends no
//!   `Origin`, so peers never meet this check.
//! - On a loopback listener, an upgrade whose `Host` names anything but
//!   this machine (a loopback address, `localhost` or `*.localhost`) is
//!   refused unless the name is in `allowed_hosts`: a DNS-rebinding page
//!   reaches 127.0.0.1 under a name of its own. A listener on another
//!   address is reached by peers under whatever name they dial, so `Host`
//!   is not checked there.
//!
//! Origins are compared in the one form browsers send (RFC 6454):
//! `scheme://host[:port]`, lower case, without the scheme's default port.

use std::net::IpAddr;

/// Why an upgrade was refused: the log line (with the remote address
/// added) and, shorter, the body of the 403 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub log: String,
    pub body: String,
}

/// The check, built once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// Normalised origins that may open a WebSocket (`allowed_origins`).
    pub origins: Vec<String>,
    /// Host names accepted besides the loopback ones (`allowed_hosts`),
    /// normalised; none when the listener is not on loopback (no check).
    pub hosts: Option<Vec<String>>,
}

impl Gate {
    /// Check one upgrade request's `Origin` and `Host` header values
    /// (`None`: the header is absent). Header bytes that are not text are
    /// shown escaped and never match.
    pub fn check(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> Result<(), Refusal> {
        if let Some(origin) = origin {
            let allowed = std::str::from_utf8(origin)
                .ok()
                .and_then(|o| normalise_origin(o).ok())
                .is_some_and(|o| self.origins.contains(&o));
            if !allowed {
                let shown = shown(origin);
                return Err(Refusal {
                    log: format!(
                        "refused a WebSocket upgrade from a web page: Origin {shown} is not in allowed_origins (add it there to let that page in)"
                    ),
                    body: format!(
                        "this peerd does not accept WebSocket connections from web pages of origin {shown} (allowed_origins)\n"
                    ),
                });
            }
        }
        if let (Some(hosts), Some(host)) = (&self.hosts, host) {
            let allowed = std::str::from_utf8(host)
                .ok()
                .and_then(host_of_header)
                .is_some_and(|h| is_loopback_name(&h) || hosts.contains(&h));
            if !allowed {
                let shown = shown(host);
                return Err(Refusal {
                    log: format!(
                        "refused a WebSocket upgrade: Host {shown} is not this machine, and this listener is on loopback (a DNS-rebinding web page?); add the name to allowed_hosts if it is yours"
                    ),
                    body: format!(
                        "Host {shown} is not accepted on this loopback listener (allowed_hosts)\n"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A header value as it appears in a log line: quoted, escaped, at most
/// 100 characters of it.
fn shown(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let cut: String = text.chars().take(100).collect();
    if cut.len() < text.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// The one form of an origin: `scheme://host[:port]`, lower case, the
/// scheme's default port dropped (a single trailing `/` is tolerated).
/// Errors say what is wrong, for config messages.
pub fn normalise_origin(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    if t == "null" {
        return Err(
            "\"null\" is the origin of every sandboxed or file:// page, from any site; it cannot be allowed"
                .into(),
        );
    }
    if t.contains('*') {
        return Err("wildcards are not supported: list each origin".into());
    }
    let Some((scheme, rest)) = t.split_once("://") else {
        return Err("use scheme://host[:port], e.g. http://localhost:3000".into());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok {
        return Err(format!("bad scheme {scheme:?}"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query or user: use scheme://host[:port] only".into());
    }
    let (host, port) = split_host_port(rest).ok_or("bad host or port")?;
    if !valid_host(&host) {
        return Err(format!("bad host {host:?}"));
    }
    let default = match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    let shown_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(match port {
        Some(p) if Some(p) != default => format!("{scheme}://{shown_host}:{p}"),
        _ => format!("{scheme}://{shown_host}"),
    })
}

/// The one form of an `allowed_hosts` entry: a host name or IP address
/// without a port, lower case, without a trailing dot or IPv6 brackets.
pub fn normalise_host(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    let bare = t
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&t);
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(bare.to_string());
    }
    if t.contains(':') {
        return Err("give the host name without a port (any port is accepted)".into());
    }
    let host = t.strip_suffix('.').unwrap_or(&t).to_string();
    if !valid_host(&host) {
        return Err("use a host name (letters, digits, '.', '-') or an IP address".into());
    }
    Ok(host)
}

/// The host part of a `Host` header, in the form of [`normalise_host`].
fn host_of_header(value: &str) -> Option<String> {
    let (host, _) = split_host_port(&value.trim().to_ascii_lowercase())?;
    let host = host.strip_suffix('.').unwrap_or(&host).to_string();
    valid_host(&host).then_some(host)
}

/// Split `host[:port]` (IPv6 in brackets) into the host without brackets
/// and the port.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
        Some(_) => return None,
    };
    Some((host.to_string(), port))
}

/// A DNS name (letters, digits, `-`, `_`, dots between labels) or an IP
/// address (IPv6 without brackets).
fn valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// This machine by name: a loopback address, `localhost`, or a name under
/// `.localhost` (which resolves to loopback by definition, RFC 6761).
fn is_loopback_name(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(origins: &[&str], hosts: Option<&[&str]>) -> Gate {
        Gate {
            origins: origins
                .iter()
                .map(|o| normalise_origin(o).unwrap())
                .collect(),
            hosts: hosts.map(|h| h.iter().map(|h| normalise_host(h).unwrap()).collect()),
        }
    }

    #[test]
    fn origins_are_normalised_to_what_browsers_send() {
        for (given, want) in [
            ("http://127.0.0.2:47599", "http://127.0.0.2:47599"),
            ("HTTP://LocalHost:3000/", "http://localhost:3000"),
            ("http://example.com:80", "http://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("https://example.com:8443", "https://example.com:8443"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("chrome-extension://abcdef", "chrome-extension://abcdef"),
        ] {
            assert_eq!(normalise_origin(given).as_deref(), Ok(want), "{given}");
        }
    }

    #[test]
    fn bad_origins_are_explained() {
        for (given, needle) in [
            ("null", "sandboxed"),
            ("*", "wildcards"),
            ("http://*.example.com", "wildcards"),
            ("localhost:3000", "scheme://host"),
            ("http://example.com/app", "no path"),
            ("http://user@example.com", "no path"),
            ("http://", "bad host"),
            ("http://exa mple.com", "bad host"),
            ("http://example.com:99999", "bad host or port"),
            ("http://example.com:", "bad host or port"),
            ("http://[::1", "bad host or port"),
            ("1http://x", "bad scheme"),
        ] {
            let e = normalise_origin(given).unwrap_err();
            assert!(e.contains(needle), "{given}: {e}");
        }
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalise_host("Peer-Host.").as_deref(), Ok("peer-host"));
        assert_eq!(normalise_host("[fe80::1]").as_deref(), Ok("fe80::1"));
        assert_eq!(normalise_host("fe80::1").as_deref(), Ok("fe80::1"));
        assert_eq!(normalise_host("192.0.2.7").as_deref(), Ok("192.0.2.7"));
        assert!(
            normalise_host("peer-host:8081")
                .unwrap_err()
                .contains("port")
        );
        assert!(normalise_host("a/b").is_err());
        assert!(normalise_host("").is_err());
    }

    #[test]
    fn no_origin_is_a_program_and_passes() {
        let g = gate(&[], Some(&[]));
        assert_eq!(g.check(None, Some(b"127.0.0.1:8080")), Ok(()));
        assert_eq!(g.check(None, None), Ok(()));
    }

    #[test]
    fn an_origin_passes_only_when_allowed() {
        let g = gate(&["http://localhost:3000"], Some(&[]));
        assert_eq!(
            g.check(Some(b"http://localhost:3000"), Some(b"127.0.0.1:8080")),
            Ok(())
        );
        // Browsers send lower case, but compare the normalised form anyway.
        assert_eq!(
            g.check(Some(b"HTTP://LOCALHOST:3000"), Some(b"127.0.0.1:8080")),
            Ok(())
        );
        for bad in [
            &b"http://localhost:3001"[..],
            b"https://localhost:3000",
            b"http://127.0.0.2:47599",
            b"null",
            b"",
            b"http://localhost:3000\xff",
        ] {
            let e = g.check(Some(bad), Some(b"127.0.0.1:8080")).unwrap_err();
            assert!(
                e.log.contains("Origin") && e.log.contains("allowed_origins"),
                "{e:?}"
            );
            assert!(e.body.contains("(allowed_origins)"), "{e:?}");
        }
        let e = gate(&[], None)
            .check(Some(b"http://evil.example"), None)
            .unwrap_err();
        assert!(e.log.contains("\"http://evil.example\""), "{}", e.log);
    }

    #[test]
    fn loopback_listener_accepts_only_this_machines_names() {
        let g = gate(&[], Some(&["peer-host"]));
        for ok in [
            &b"127.0.0.1:8080"[..],
            b"127.0.0.1",
            b"127.1.2.3:1",
            b"[::1]:8080",
            b"[::ffff:127.0.0.1]:8080",
            b"localhost:8080",
            b"LOCALHOST.",
            b"app.localhost:8080",
            b"peer-host:8081",
            b"Peer-Host",
        ] {
            assert_eq!(
                g.check(None, Some(ok)),
                Ok(()),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b"evil.example:8080"[..],
            b"localhost.evil.example",
            b"192.0.2.1:8080",
            b"[fe80::1]:8080",
            b"peer-host:0",
            b"127.0.0.1:80:80",
            b"",
            b"\xff",
        ] {
            let e = g.check(None, Some(bad)).unwrap_err();
            assert!(
                e.log.contains("Host") && e.log.contains("allowed_hosts"),
                "{e:?}"
            );
        }
        let e = g.check(None, Some(b"evil.example:8080")).unwrap_err();
        assert!(e.log.contains("\"evil.example:8080\""), "{}", e.log);
    }

    #[test]
    fn other_listeners_do_not_check_host() {
        let g = gate(&[], None);
        assert_eq!(g.check(None, Some(b"peer-host:8081")), Ok(()));
        assert_eq!(g.check(None, Some(b"evil.example")), Ok(()));
    }

    #[test]
    fn long_header_values_are_cut_in_messages() {
        let long = format!("http://{}.example", "a".repeat(500));
        let e = gate(&[], None)
            .check(Some(long.as_bytes()), None)
            .unwrap_err();
        assert!(e.log.len() < 300, "{}", e.log);
    }
}
