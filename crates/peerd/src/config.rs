//! The effective configuration of one instance (SPEC §2).
//!
//! Without a config file, instances `a` and `b` get built-in defaults that
//! reproduce the original two-server setup on one machine (a on :8080 with
//! peer b at :8081, and the reverse); any other instance needs a file. A
//! file may set any subset of keys; unknown keys are an error naming the
//! key and the file, so a typo never silently falls back to a default.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::units::{HumanDuration, Size};

/// How hard the journal pushes data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Group commit: one fsync per batch, before any ack or `send` reply.
    Batch,
    /// Never fsync: for benchmarks only; a crash can lose accepted messages.
    Never,
}

/// One peer this node keeps a link to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's node name, as it states it in its Hello.
    pub name: String,
    /// Where to dial it (`ws://host:port/path`).
    pub url: String,
}

/// Everything `peerd` runs with, defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this came from: a file path or "built-in defaults".
    pub source: String,
    pub instance: String,
    /// The node name stated in handshakes (defaults to the instance name).
    pub node: String,
    pub listen: SocketAddr,
    /// HTTP path of the WebSocket endpoint.
    pub path: String,
    pub peers: Vec<Peer>,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    pub handshake_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_message: u64,
    pub max_pending_handshakes: usize,
    pub outbox_limit_bytes: u64,
    pub outbox_limit_messages: u64,
    pub inbox_retention_age: Option<Duration>,
    pub inbox_retention_bytes: u64,
    pub fsync: Fsync,
    /// Accept plain WebSocket clients (no `peerlink.v1` subprotocol) even
    /// when a secret is set. See [`Config::plain_clients_allowed`].
    pub plain_clients: bool,
}

/// The file form: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node: Option<String>,
    listen: Option<String>,
    path: Option<String>,
    #[serde(default)]
    peer: Vec<FilePeer>,
    heartbeat: Option<HumanDuration>,
    dead_after: Option<HumanDuration>,
    handshake_timeout: Option<HumanDuration>,
    backoff_min: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
    max_message: Option<Size>,
    max_pending_handshakes: Option<usize>,
    outbox_limit: Option<OutboxLimit>,
    inbox_retention: Option<Retention>,
    fsync: Option<Fsync>,
    plain_clients: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    name: String,
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxLimit {
    bytes: Option<Size>,
    messages: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Retention {
    age: Option<HumanDuration>,
    bytes: Option<Size>,
}

/// The built-in pair: (instance, listen, peer name, peer url).
const BUILTIN: [(&str, &str, &str, &str); 2] = [
    ("a", "127.0.0.1:8080", "b", "ws://127.0.0.1:8081/ws"),
    ("b", "127.0.0.1:8081", "a", "ws://127.0.0.1:8080/ws"),
];

impl Config {
    /// Load the config of `instance`: from `explicit` if given, else from
    /// the default location if that file exists, else built-in defaults
    /// (only for `a` and `b`).
    pub fn load(instance: &str, explicit: Option<&Path>) -> Result<Config> {
        if !peerlink::valid_instance_name(instance) {
            return Err(Error::Usage(format!(
                "invalid instance name {instance:?}: use 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit"
            )));
        }
        let path: Option<PathBuf> = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Some(peerlink::paths::config_path(instance)).filter(|p| p.exists()),
        };
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
                    path: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                })?;
                Self::parse(instance, &text, &path.display().to_string())
            }
            None if BUILTIN.iter().any(|b| b.0 == instance) => {
                Self::parse(instance, "", "built-in defaults")
            }
            None => Err(Error::Config {
                path: peerlink::paths::config_path(instance).display().to_string(),
                message: format!(
                    "no config for instance '{instance}' (only 'a' and 'b' have built-in defaults); \
                     create this file or pass --config FILE"
                ),
            }),
        }
    }

    /// Parse config text; `source` names it in errors.
    pub fn parse(instance: &str, text: &str, source: &str) -> Result<Config> {
        let err = |message: String| Error::Config {
            path: source.to_string(),
            message,
        };
        let file: File =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let builtin = BUILTIN.iter().find(|b| b.0 == instance);
        let node = file.node.unwrap_or_else(|| instance.to_string());
        if !peerlink::valid_instance_name(&node) {
            return Err(err(format!(
                "node {node:?}: use 1-32 of a-z, 0-9, '_' and '-'"
            )));
        }
        let listen_text = match (file.listen, builtin) {
            (Some(l), _) => l,
            (None, Some(b)) => b.1.to_string(),
            (None, None) => {
                return Err(err(
                    "missing key `listen` (e.g. listen = \"127.0.0.1:8080\")".into(),
                ));
            }
        };
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            err(format!(
                "listen {listen_text:?}: {e} (use host:port, e.g. 127.0.0.1:8080)"
            ))
        })?;
        let path = file.path.unwrap_or_else(|| "/ws".to_string());
        if !path.starts_with('/') {
            return Err(err(format!("path {path:?} must start with '/'")));
        }
        let mut peers: Vec<Peer> = file
            .peer
            .into_iter()
            .map(|p| Peer {
                name: p.name,
                url: p.url,
            })
            .collect();
        if let (true, Some(b)) = (peers.is_empty(), builtin) {
            peers.push(Peer {
                name: b.2.to_string(),
                url: b.3.to_string(),
            });
        }
        for (i, p) in peers.iter().enumerate() {
            if !peerlink::valid_instance_name(&p.name) {
                return Err(err(format!(
                    "peer name {:?}: use 1-32 of a-z, 0-9, '_' and '-'",
                    p.name
                )));
            }
            if p.name == node {
                return Err(err(format!("peer {:?} has this node's own name", p.name)));
            }
            if peers[..i].iter().any(|q| q.name == p.name) {
                return Err(err(format!("peer {:?} is listed twice", p.name)));
            }
            if !(p.url.starts_with("ws://") || p.url.starts_with("wss://")) {
                return Err(err(format!(
                    "peer {:?} url {:?} must start with ws:// or wss://",
                    p.name, p.url
                )));
            }
        }
        let d = |v: Option<HumanDuration>, def: u64| {
            v.map(|h| h.0).unwrap_or(Duration::from_millis(def))
        };
        let cfg = Config {
            source: source.to_string(),
            instance: instance.to_string(),
            node,
            listen,
            path,
            peers,
            heartbeat: d(file.heartbeat, 5_000),
            dead_after: d(file.dead_after, 15_000),
            handshake_timeout: d(file.handshake_timeout, 5_000),
            backoff_min: d(file.backoff_min, 100),
            backoff_max: d(file.backoff_max, 30_000),
            max_message: file.max_message.map(|s| s.0).unwrap_or(1 << 20),
            max_pending_handshakes: file.max_pending_handshakes.unwrap_or(64),
            outbox_limit_bytes: file
                .outbox_limit
                .as_ref()
                .and_then(|o| o.bytes)
                .map(|s| s.0)
                .unwrap_or(1 << 30),
            outbox_limit_messages: file
                .outbox_limit
                .as_ref()
                .and_then(|o| o.messages)
                .unwrap_or(10_000_000),
            inbox_retention_age: file
                .inbox_retention
                .as_ref()
                .and_then(|r| r.age)
                .map(|h| h.0),
            inbox_retention_bytes: file
                .inbox_retention
                .as_ref()
                .and_then(|r| r.bytes)
                .map(|s| s.0)
                .unwrap_or(1 << 30),
            fsync: file.fsync.unwrap_or(Fsync::Batch),
            plain_clients: file.plain_clients.unwrap_or(false),
        };
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    /// Whether plain WebSocket clients may connect (SPEC §7): always when
    /// no secret is configured, and with a secret only if `plain_clients =
    /// true`, so they never bypass peer authentication.
    ///
    /// No secret exists in this version yet, so this is `true`; the
    /// security branch makes it `self.plain_clients || secret.is_none()`.
    pub fn plain_clients_allowed(&self) -> bool {
        true
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.heartbeat.is_zero() || self.dead_after <= self.heartbeat {
            return Err(format!(
                "dead_after ({}) must be longer than heartbeat ({}), and heartbeat above zero",
                humantime::format_duration(self.dead_after),
                humantime::format_duration(self.heartbeat)
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err("backoff_min must be above zero and at most backoff_max".into());
        }
        if self.max_message == 0 || self.max_message > 64 << 20 {
            return Err("max_message must be between 1B and 64MiB".into());
        }
        if self.max_pending_handshakes == 0 {
            return Err("max_pending_handshakes must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("handshake_timeout must be above zero".into());
        }
        Ok(())
    }

    /// The effective config as TOML, for `peerd check-config`.
    pub fn render(&self) -> String {
        let d = |v: Duration| format!("\"{}\"", humantime::format_duration(v));
        let mut s = String::new();
        let _ = writeln!(s, "# instance {} from {}", self.instance, self.source);
        let _ = writeln!(s, "node = \"{}\"", self.node);
        let _ = writeln!(s, "listen = \"{}\"", self.listen);
        let _ = writeln!(s, "path = \"{}\"", self.path);
        let _ = writeln!(s, "heartbeat = {}", d(self.heartbeat));
        let _ = writeln!(s, "dead_after = {}", d(self.dead_after));
        let _ = writeln!(s, "handshake_timeout = {}", d(self.handshake_timeout));
        let _ = writeln!(s, "backoff_min = {}", d(self.backoff_min));
        let _ = writeln!(s, "backoff_max = {}", d(self.backoff_max));
        let _ = writeln!(s, "max_message = \"{}\"", Size(self.max_message));
        let _ = writeln!(
            s,
            "max_pending_handshakes = {}",
            self.max_pending_handshakes
        );
        let fsync = match self.fsync {
            Fsync::Batch => "batch",
            Fsync::Never => "never",
        };
        let _ = writeln!(s, "fsync = \"{fsync}\"");
        let _ = writeln!(s, "plain_clients = {}", self.plain_clients);
        let _ = writeln!(
            s,
            "outbox_limit = {{ bytes = \"{}\", messages = {} }}",
            Size(self.outbox_limit_bytes),
            self.outbox_limit_messages
        );
        match self.inbox_retention_age {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "inbox_retention = {{ age = {}, bytes = \"{}\" }}",
                    d(a),
                    Size(self.inbox_retention_bytes)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "inbox_retention = {{ bytes = \"{}\" }}",
                    Size(self.inbox_retention_bytes)
                );
            }
        }
        for p in &self.peers {
            let _ = writeln!(s, "\n[[peer]]\nname = \"{}\"\nurl = \"{}\"", p.name, p.url);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pair_reproduces_the_original() {
        let a = Config::parse("a", "", "built-in").unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            a.peers,
            vec![Peer {
                name: "b".into(),
                url: "ws://127.0.0.1:8081/ws".into()
            }]
        );
        let b = Config::parse("b", "", "built-in").unwrap();
        assert_eq!(b.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(b.peers[0].url, "ws://127.0.0.1:8080/ws");
        assert_eq!(a.path, "/ws");
        assert_eq!(a.heartbeat, Duration::from_secs(5));
        assert_eq!(a.dead_after, Duration::from_secs(15));
        assert_eq!(a.backoff_min, Duration::from_millis(100));
        assert_eq!(a.backoff_max, Duration::from_secs(30));
        assert_eq!(a.max_message, 1 << 20);
        assert_eq!(a.fsync, Fsync::Batch);
        assert!(!a.plain_clients);
        assert!(
            a.plain_clients_allowed(),
            "no secret: plain clients welcome"
        );
    }

    #[test]
    fn other_instances_need_listen() {
        let e = Config::parse("c", "", "/etc/peerd/c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/peerd/c.toml") && e.contains("listen"),
            "{e}"
        );
    }

    #[test]
    fn file_sets_keys() {
        let text = r#"
            node = "alpha"
            listen = "127.0.0.1:9000"
            heartbeat = "250ms"
            dead_after = "1s"
            max_message = "64KiB"
            fsync = "never"
            outbox_limit = { messages = 10 }
            plain_clients = true
            [[peer]]
            name = "beta"
            url = "ws://127.0.0.1:9001/ws"
        "#;
        let c = Config::parse("x", text, "x.toml").unwrap();
        assert_eq!(c.node, "alpha");
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        assert_eq!(c.max_message, 65536);
        assert_eq!(c.fsync, Fsync::Never);
        assert_eq!(c.outbox_limit_messages, 10);
        assert!(c.plain_clients);
        assert_eq!(c.peers[0].name, "beta");
        // The rendering parses back to the same thing.
        let again = Config::parse("x", &c.render(), "rendered").unwrap();
        assert_eq!(
            again.render().lines().skip(1).collect::<Vec<_>>(),
            c.render().lines().skip(1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = Config::parse("a", "hartbeat = \"1s\"", "/etc/peerd/a.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hartbeat") && e.contains("/etc/peerd/a.toml"),
            "{e}"
        );
        let e = Config::parse(
            "a",
            "[[peer]]\nname=\"b\"\nurl=\"ws://x\"\nport=1",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("heartbeat = \"soon\"", "invalid duration"),
            ("max_message = \"1XB\"", "size unit"),
            ("listen = \"nowhere\"", "listen"),
            ("heartbeat = \"20s\"", "dead_after"),
            ("[[peer]]\nname = \"a\"\nurl = \"ws://x/ws\"", "own name"),
            ("[[peer]]\nname = \"c\"\nurl = \"http://x/ws\"", "ws://"),
            ("fsync = \"sometimes\"", "fsync"),
        ] {
            let e = Config::parse("a", text, "f.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn bad_instance_name() {
        assert!(Config::load("Bad/Name", None).is_err());
    }
}
