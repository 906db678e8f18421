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

use crate::auth::{self, Secret};
use crate::error::{Error, Result};
use crate::origin;
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
    /// The pre-shared secrets peers prove they know, preferred (newest)
    /// first (`secret`, `secret_file`, `secrets` or `secret_files`; see
    /// `auth` for the keyring); empty: peers are not authenticated.
    pub secrets: Vec<Secret>,
    /// Where the secrets were read from, if from files (same order).
    pub secret_files: Vec<PathBuf>,
    /// Allow a non-loopback `listen` without a secret (warned at start).
    pub insecure: bool,
    /// Origins of web pages that may open a WebSocket here, normalised
    /// (`scheme://host[:port]`); an upgrade with any other `Origin` is
    /// refused. See [`crate::origin`].
    pub allowed_origins: Vec<String>,
    /// Names accepted in `Host` on a loopback listener besides this
    /// machine's own (loopback addresses, `localhost`), normalised.
    pub allowed_hosts: Vec<String>,
    /// Certificate files (`[tls]`), resolved against the config's folder.
    pub tls: TlsFiles,
}

/// `[tls]`: what the listener serves and what the dialler trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The listener's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// The listener's private key (PEM).
    pub key: Option<PathBuf>,
    /// Trust anchors for `wss://` peers: a CA or a pinned certificate (PEM).
    pub ca: Option<PathBuf>,
}

/// The largest `secret_file` read: it holds one line.
const MAX_SECRET_FILE: u64 = 4096;

/// The longest timer setting: longer ones would overflow clock arithmetic
/// and are a typo anyway.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

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
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secrets: Option<Vec<String>>,
    secret_files: Option<Vec<PathBuf>>,
    insecure: Option<bool>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
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

    /// Parse config text; `source` names it in errors, and relative paths
    /// in it (`secret_file`, `[tls]`) are taken from `source`'s folder.
    /// Reads `secret_file` if one is named.
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
            check_url(&p.url)
                .map_err(|e| err(format!("[[peer]] {:?}: url {:?}: {e}", p.name, p.url)))?;
        }
        let base = Path::new(source).parent().unwrap_or(Path::new(""));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let given = [
            file.secret.is_some(),
            file.secret_file.is_some(),
            file.secrets.is_some(),
            file.secret_files.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(err(
                "set only one of `secret`, `secret_file`, `secrets` and `secret_files`".into(),
            ));
        }
        let inline: Vec<String> = file
            .secret
            .into_iter()
            .chain(file.secrets.unwrap_or_default())
            .collect();
        let files: Vec<PathBuf> = file
            .secret_file
            .into_iter()
            .chain(file.secret_files.unwrap_or_default())
            .map(resolve)
            .collect();
        let mut secrets = Vec::new();
        for (i, s) in inline.iter().enumerate() {
            let n = if inline.len() > 1 {
                format!("secrets[{i}]")
            } else {
                "secret".into()
            };
            secrets.push(Secret::new(s.as_bytes()).map_err(|e| err(format!("{n}: {e}")))?);
        }
        for p in &files {
            secrets.push(read_secret_file(p).map_err(err)?);
        }
        for (i, s) in secrets.iter().enumerate() {
            if secrets[..i].iter().any(|t| t.id() == s.id()) {
                return Err(err(format!(
                    "the same secret (id {}) is listed twice",
                    s.id()
                )));
            }
        }
        let secret_files = files;
        let tls = file
            .tls
            .map(|t| TlsFiles {
                cert: t.cert.map(resolve),
                key: t.key.map(resolve),
                ca: t.ca.map(resolve),
            })
            .unwrap_or_default();
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(err(
                "[tls] needs both `cert` and `key` for the listener, or neither".into(),
            ));
        }
        if let (Some(p), None) = (peers.iter().find(|p| p.url.starts_with("wss://")), &tls.ca) {
            return Err(err(format!(
                "peer {:?} url {:?} is wss://: set `[tls] ca` to the CA (or the peer's own certificate) that verifies it",
                p.name, p.url
            )));
        }
        let allowed_origins = normalise_all(
            "allowed_origins",
            file.allowed_origins,
            origin::normalise_origin,
        )
        .map_err(err)?;
        let allowed_hosts =
            normalise_all("allowed_hosts", file.allowed_hosts, origin::normalise_host)
                .map_err(err)?;
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
            secrets,
            secret_files,
            insecure: file.insecure.unwrap_or(false),
            allowed_origins,
            allowed_hosts,
            tls,
        };
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    /// Whether plain WebSocket clients may connect (SPEC §7): always when
    /// no secret is configured, and with a secret only if `plain_clients =
    /// true`, so they never bypass peer authentication.
    pub fn plain_clients_allowed(&self) -> bool {
        self.plain_clients || self.secrets.is_empty()
    }

    /// Listening beyond this host with no secret: allowed only with
    /// `insecure = true`, and warned about at start.
    pub fn insecure_listen(&self) -> bool {
        !self.listen.ip().is_loopback() && self.secrets.is_empty()
    }

    /// The `Origin` and `Host` check of the listener: `Host` is checked
    /// only when `listen` is a loopback address.
    pub fn gate(&self) -> origin::Gate {
        origin::Gate {
            origins: self.allowed_origins.clone(),
            hosts: self
                .listen
                .ip()
                .is_loopback()
                .then(|| self.allowed_hosts.clone()),
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.insecure_listen() && !self.insecure {
            return Err(format!(
                "listen {} is not a loopback address and no secret is set, so anyone who can reach it could send messages; \
                 set `secret` or `secret_file` (the same on both peers), or `insecure = true` to allow it anyway",
                self.listen
            ));
        }
        for (name, v) in [
            ("heartbeat", self.heartbeat),
            ("dead_after", self.dead_after),
            ("handshake_timeout", self.handshake_timeout),
            ("backoff_min", self.backoff_min),
            ("backoff_max", self.backoff_max),
        ] {
            if v > MAX_TIMER {
                return Err(format!("{name} must be at most 1 day"));
            }
        }
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
        if self.max_message == 0 || self.max_message > peerlink::control::MAX_MESSAGE_LIMIT {
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
        let _ = writeln!(s, "path = {}", quote(&self.path));
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
        if !self.secrets.is_empty() {
            let ids: Vec<auth::KeyId> = self.secrets.iter().map(Secret::id).collect();
            let _ = writeln!(s, "# secret ids, preferred first: {}", auth::show_ids(&ids));
        }
        match (self.secret_files.as_slice(), self.secrets.len()) {
            ([p], _) => {
                let _ = writeln!(s, "secret_file = {}", quote(&p.display().to_string()));
            }
            ([], 0) => {}
            ([], 1) => {
                let _ = writeln!(s, "secret = \"<masked>\"");
            }
            ([], n) => {
                let _ = writeln!(s, "secrets = [{}]", vec!["\"<masked>\""; n].join(", "));
            }
            (files, _) => {
                let shown: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                let _ = writeln!(s, "secret_files = {}", quote_list(&shown));
            }
        }
        if self.insecure {
            let _ = writeln!(s, "insecure = true");
        }
        let _ = writeln!(s, "allowed_origins = {}", quote_list(&self.allowed_origins));
        if !self.listen.ip().is_loopback() {
            let _ = writeln!(
                s,
                "# allowed_hosts is not used: Host is checked only on a loopback listen address"
            );
        }
        let _ = writeln!(s, "allowed_hosts = {}", quote_list(&self.allowed_hosts));
        if self.tls != TlsFiles::default() {
            let _ = writeln!(s, "\n[tls]");
            for (k, v) in [
                ("cert", &self.tls.cert),
                ("key", &self.tls.key),
                ("ca", &self.tls.ca),
            ] {
                if let Some(v) = v {
                    let _ = writeln!(s, "{k} = {}", quote(&v.display().to_string()));
                }
            }
        }
        for p in &self.peers {
            let _ = writeln!(
                s,
                "\n[[peer]]\nname = \"{}\"\nurl = {}",
                p.name,
                quote(&p.url)
            );
        }
        s
    }
}

/// Check a peer URL the way the dialler will use it, so that `check-config`
/// catches what would otherwise fail (or, worse, dial somewhere else) at run
/// time: scheme `ws` or `wss`, a host (DNS name, IPv4 address or `[IPv6]`),
/// an optional port in 1-65535, and only characters a URL may hold. The
/// reason names the part that is wrong.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    if let Some((i, c)) = url.char_indices().find(|(_, c)| {
        !c.is_ascii_graphic() || matches!(c, '\\' | '"' | '<' | '>' | '`' | '{' | '}' | '|' | '^')
    }) {
        let what = match c {
            ' ' => "a space".to_string(),
            c if c.is_control() => format!("control character {:?}", c),
            c => format!("character {c:?}"),
        };
        return Err(format!(
            "{what} at position {} is not allowed in a URL (percent-encode it in the path)",
            i + 1
        ));
    }
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if let Some(r) = url.strip_prefix("wss://") {
        r
    } else {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        return Err(if scheme.is_empty() {
            "must start with ws:// or wss://".into()
        } else {
            format!("scheme {scheme:?} is not supported: use ws:// or wss://")
        });
    };
    if url.contains('#') {
        return Err("a fragment (#...) is never sent to the server: remove it".into());
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(
            "user info (user@host) is not supported: peers authenticate with the secret".into(),
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("an IPv6 host needs its closing ']'")?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("host [{addr}] is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                format!("unexpected {p:?} after the IPv6 host (use [addr]:port)")
            })?),
        };
        (authority, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host (use ws://host:port/path)".into());
    }
    if !host.starts_with('[') {
        check_host(host)?;
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("port {p:?} is not a number"));
        }
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            _ => return Err(format!("port {p} is out of range (1-65535)")),
        }
    }
    if !path.is_empty() && !path.starts_with('/') {
        return Err("the path must start with '/'".into());
    }
    // Last, the parser the dialler itself uses: whatever passes here is a
    // request it can make.
    url.into_client_request()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A DNS name or an IPv4 address.
fn check_host(host: &str) -> std::result::Result<(), String> {
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("host {host:?} is not an IPv4 address"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "host {host:?} is not a valid host name (letters, digits, '-' and '_' in dot-separated labels), \
             IPv4 address or [IPv6] address"
        ));
    }
    Ok(())
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML array of string literals.
fn quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Normalise each entry of list `key`, naming the key and the entry in
/// errors; duplicates (after normalising) are dropped.
fn normalise_all(
    key: &str,
    items: Option<Vec<String>>,
    normalise: fn(&str) -> std::result::Result<String, String>,
) -> std::result::Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in items.unwrap_or_default() {
        let n = normalise(&item).map_err(|e| format!("{key}: {item:?}: {e}"))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Read the secret from `path`: a regular file of at most 4 KiB that is
/// private enough ([`crate::access::private_enough`]: no access for
/// others; the group may read it only when it is the daemon's or
/// `peerd`). Surrounding whitespace (the trailing newline) is not part of
/// the secret.
fn read_secret_file(path: &Path) -> std::result::Result<Secret, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("secret_file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("secret_file {shown}: not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = crate::access::FileMode {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o777,
        };
        crate::access::private_enough(mode, &crate::access::trusted_groups(), &shown.to_string())?;
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(format!(
            "secret_file {shown}: {} bytes, over {MAX_SECRET_FILE}; it should hold one line",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        #[cfg(unix)]
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return format!(
                "secret_file {shown}: {e}; peerd runs as {}, which must be able to read it \
                 (for the service: `chown root:peerd {shown} && chmod 640 {shown}`)",
                crate::access::current_user()
            );
        }
        format!("secret_file {shown}: {e}")
    })?;
    Secret::new(bytes.trim_ascii()).map_err(|e| format!("secret_file {shown}: {e}"))
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
    fn peer_urls_are_checked_at_load() {
        let load = |url: &str| {
            let text = format!("[[peer]]\nname = \"b\"\nurl = {}\n", quote(url));
            Config::parse("a", &text, "/etc/peerd/a.toml").map(|_| ())
        };
        for ok in [
            "ws://127.0.0.1:8081/ws",
            "ws://127.0.0.1/ws",
            "ws://localhost:8081/ws",
            "ws://peer-b.example.org.:65535/ws?x=1",
            "ws://[::1]:8081/ws",
            "ws://[fe80::1]/ws",
            "ws://127.0.0.1:8081",
            "ws://my_host:1/p%20q",
        ] {
            assert!(load(ok).is_ok(), "{ok}: {:?}", load(ok));
        }
        for (bad, needle) in [
            ("ws://127.0.0.1:99999/ws", "port 99999 is out of range"),
            ("ws://127.0.0.1:0/ws", "port 0 is out of range"),
            ("ws://127.0.0.1:80 80/ws", "a space at position 18"),
            ("ws://127.0.0.1:8o/ws", "port \"8o\" is not a number"),
            ("ws://127.0.0.1:/ws", "port \"\" is not a number"),
            ("ws://:8081/ws", "no host"),
            ("ws:///ws", "no host"),
            (
                "http://127.0.0.1:8081/ws",
                "scheme \"http\" is not supported",
            ),
            ("127.0.0.1:8081/ws", "must start with ws://"),
            ("ws://300.1.1.1:8081/ws", "not an IPv4 address"),
            ("ws://bad..name:8081/ws", "not a valid host name"),
            ("ws://-bad:8081/ws", "not a valid host name"),
            ("ws://[::g]:8081/ws", "not an IPv6 address"),
            ("ws://[::1:8081/ws", "closing ']'"),
            ("ws://[::1]8081/ws", "after the IPv6 host"),
            ("ws://u:p@127.0.0.1:8081/ws", "user info"),
            ("ws://127.0.0.1:8081/ws#top", "fragment"),
            ("ws://127.0.0.1:8081/w\ts", "control character"),
            ("ws://127.0.0.1:8081/wé", "character 'é'"),
        ] {
            let e = load(bad).expect_err(bad).to_string();
            assert!(
                e.contains(needle)
                    && e.contains("/etc/peerd/a.toml")
                    && e.contains("url")
                    && e.contains("\"b\""),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn secret_is_masked_and_exclusive() {
        let text = "secret = \"correct horse battery staple\"";
        let c = Config::parse("a", text, "a.toml").unwrap();
        assert_eq!(c.secrets.iter().map(|s| s.len()).collect::<Vec<_>>(), [28]);
        let shown = c.render();
        assert!(shown.contains("secret = \"<masked>\""), "{shown}");
        assert!(!shown.contains("horse"), "{shown}");
        assert!(!format!("{c:?}").contains("horse"));
        let e = Config::parse(
            "a",
            "secret = \"0123456789abcdef\"\nsecret_file = \"s\"",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only one of"), "{e}");
        let e = Config::parse("a", "secret = \"short\"", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn a_keyring_keeps_its_order_and_shows_only_ids() {
        let text = "secrets = [\"new secret 0123456789\", \"old secret 0123456789\"]";
        let c = Config::parse("a", text, "a.toml").unwrap();
        let new = Secret::new(b"new secret 0123456789").unwrap().id();
        let old = Secret::new(b"old secret 0123456789").unwrap().id();
        assert_eq!(
            c.secrets.iter().map(Secret::id).collect::<Vec<_>>(),
            [new, old]
        );
        let shown = c.render();
        assert!(
            shown.contains(&format!("preferred first: {new}, {old}")),
            "{shown}"
        );
        assert!(!shown.contains("0123456789"), "{shown}");
        let e = Config::parse(
            "a",
            "secrets = [\"same secret 0123456\", \"same secret 0123456\"]",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = Config::parse(
            "a",
            "secrets = [\"long enough secret!\", \"short\"]",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("secrets[1]") && e.contains("at least 16"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn secret_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let source = dir.path().join("a.toml").display().to_string();
        // Relative to the config file's folder.
        let e = Config::parse("a", "secret_file = \"secret\"", &source)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 640") && e.contains("0644"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse("a", "secret_file = \"secret\"", &source).unwrap();
        // The newline is not part of the secret.
        assert_eq!(c.secrets.iter().map(|s| s.len()).collect::<Vec<_>>(), [20]);
        assert_eq!(c.secret_files, std::slice::from_ref(&file));
        assert!(c.render().contains("secret_file = "));
        let e = Config::parse("a", "secret_file = \"nope\"", &source)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn non_loopback_listen_needs_a_secret_or_insecure() {
        let e = Config::parse("a", "listen = \"0.0.0.0:8080\"", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("secret") && e.contains("insecure = true"), "{e}");
        let c = Config::parse("a", "listen = \"0.0.0.0:8080\"\ninsecure = true", "a.toml").unwrap();
        assert!(c.insecure_listen());
        let c = Config::parse(
            "a",
            "listen = \"0.0.0.0:8080\"\nsecret = \"0123456789abcdef\"",
            "a.toml",
        )
        .unwrap();
        assert!(!c.insecure_listen());
        assert!(!Config::parse("a", "", "a.toml").unwrap().insecure_listen());
    }

    #[test]
    fn tls_keys_are_checked() {
        let e = Config::parse("a", "[tls]\ncert = \"c.pem\"", "/etc/peerd/a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("both"), "{e}");
        let wss = "[[peer]]\nname = \"b\"\nurl = \"wss://127.0.0.1:8081/ws\"\n";
        let e = Config::parse("a", wss, "a.toml").unwrap_err().to_string();
        assert!(e.contains("[tls] ca"), "{e}");
        let text = format!("[tls]\nca = \"ca.pem\"\ncert = \"/x/c.pem\"\nkey = \"k.pem\"\n{wss}");
        let c = Config::parse("a", &text, "/etc/peerd/a.toml").unwrap();
        assert_eq!(c.tls.ca.as_deref(), Some(Path::new("/etc/peerd/ca.pem")));
        assert_eq!(c.tls.cert.as_deref(), Some(Path::new("/x/c.pem")));
        let again = Config::parse("a", &c.render(), "rendered").unwrap();
        assert_eq!(again.tls, c.tls);
        let e = Config::parse("a", "[tls]\ncrt = \"x\"", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("crt"), "{e}");
    }

    #[test]
    fn allowed_origins_and_hosts_are_normalised_and_shown() {
        let c = Config::parse("a", "", "a.toml").unwrap();
        assert!(c.allowed_origins.is_empty() && c.allowed_hosts.is_empty());
        let shown = c.render();
        assert!(shown.contains("allowed_origins = []\n"), "{shown}");
        assert!(shown.contains("allowed_hosts = []\n"), "{shown}");
        assert_eq!(c.gate().hosts, Some(vec![]), "loopback: Host checked");

        let text = r#"
            allowed_origins = ["HTTP://LocalHost:3000/", "https://app.example:443", "http://localhost:3000"]
            allowed_hosts = ["Peer-Host."]
        "#;
        let c = Config::parse("a", text, "a.toml").unwrap();
        assert_eq!(
            c.allowed_origins,
            ["http://localhost:3000", "https://app.example"]
        );
        assert_eq!(c.allowed_hosts, ["peer-host"]);
        let shown = c.render();
        assert!(
            shown
                .contains("allowed_origins = [\"http://localhost:3000\", \"https://app.example\"]"),
            "{shown}"
        );
        let again = Config::parse("a", &shown, "rendered").unwrap();
        assert_eq!(again.allowed_origins, c.allowed_origins);
        assert_eq!(again.allowed_hosts, c.allowed_hosts);

        // Not on loopback: Host is not checked, and check-config says so.
        let c = Config::parse(
            "a",
            "listen = \"0.0.0.0:8080\"\ninsecure = true\nallowed_hosts = [\"x\"]",
            "a.toml",
        )
        .unwrap();
        assert_eq!(c.gate().hosts, None);
        assert!(c.render().contains("# allowed_hosts is not used"));
    }

    #[test]
    fn bad_origins_and_hosts_name_key_entry_and_file() {
        for (text, needle) in [
            ("allowed_origins = [\"localhost:3000\"]", "scheme://host"),
            ("allowed_origins = [\"null\"]", "cannot be allowed"),
            ("allowed_origins = [\"*\"]", "wildcards"),
            ("allowed_origins = [\"http://x.example/app\"]", "no path"),
            ("allowed_origins = \"http://x.example\"", "allowed_origins"),
            ("allowed_hosts = [\"peer-host:8081\"]", "without a port"),
            ("allowed_hosts = [\"a b\"]", "host name"),
        ] {
            let e = Config::parse("a", text, "/etc/peerd/a.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains("/etc/peerd/a.toml"), "{text}: {e}");
            assert!(e.contains(needle), "{text}: {e}");
            let key = if text.starts_with("allowed_origins") {
                "allowed_origins"
            } else {
                "allowed_hosts"
            };
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn huge_timers_are_refused() {
        let e = Config::parse("a", "backoff_max = \"100000years\"", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backoff_max"), "{e}");
    }

    #[test]
    fn bad_instance_name() {
        assert!(Config::load("Bad/Name", None).is_err());
    }
}
