//! Where an instance keeps its control socket and its state (SPEC §2).
//!
//! One rule, used by both `peerd` and `peerctl`, so they always agree:
//!
//! control socket: `--socket` > `$PEERD_SOCKET` > `$RUNTIME_DIRECTORY/control.sock`
//! > `/run/peerd/<i>/control.sock` (root) > `$XDG_RUNTIME_DIR/peerd/<i>/control.sock`
//! > `/tmp/peerd-<uid>/<i>/control.sock`
//!
//! state: `--state-dir` > `$STATE_DIRECTORY` > `/var/lib/peerd/<i>` (root)
//! > `$XDG_STATE_HOME/peerd/<i>` > `~/.local/state/peerd/<i>`
//!
//! Each instance gets a directory of its own, so stopping one instance (and
//! systemd removing its `RuntimeDirectory`) never takes another's socket.
//! On Windows the control endpoint is the named pipe `peerd-<i>` instead.
//!
//! The environment is passed in ([`Env`]) so the rule is testable without
//! touching the process environment.
//!
//! `peerctl` run by a user (not root) also looks under `/run/peerd`, where
//! the system service keeps its sockets ([`locate_socket`],
//! [`running_instances`]): members of the `peerd` group may use them, and
//! for anyone else the directory is unreadable, which is reported as
//! [`Probe::Denied`] (who to ask for access), never as "not running".

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// File name of the control socket inside an instance's runtime directory.
pub const SOCKET_FILE: &str = "control.sock";

/// Unix socket paths are limited by `sun_path` (108 bytes on Linux,
/// including the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The parts of the environment the path rule reads.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, OsString>,
    /// Effective user id (0 = root); always 0 off Unix, where it is unused.
    pub uid: u32,
    /// Where the system service's instances keep their runtime directories
    /// ([`SYSTEM_RUNTIME_BASE`]; another folder only in tests).
    pub system_base: PathBuf,
}

/// Where instances run by root or by systemd (`RuntimeDirectory=peerd/%i`)
/// keep their runtime directories.
pub const SYSTEM_RUNTIME_BASE: &str = "/run/peerd";

const VARS: &[&str] = &[
    "PEERD_SOCKET",
    "RUNTIME_DIRECTORY",
    "XDG_RUNTIME_DIR",
    "STATE_DIRECTORY",
    "XDG_STATE_HOME",
    "HOME",
];

impl Env {
    /// The current process's environment and user.
    pub fn current() -> Self {
        let vars = VARS
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (k.to_string(), v)))
            .collect();
        Self {
            vars,
            uid: current_uid(),
            system_base: PathBuf::from(SYSTEM_RUNTIME_BASE),
        }
    }

    /// A made-up environment, for tests.
    pub fn fake(uid: u32, vars: &[(&str, &str)]) -> Self {
        let vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Self {
            vars,
            uid,
            system_base: PathBuf::from(SYSTEM_RUNTIME_BASE),
        }
    }

    /// The same, with the system service's runtime base elsewhere (tests).
    pub fn with_system_base(mut self, base: impl Into<PathBuf>) -> Self {
        self.system_base = base.into();
        self
    }

    fn get(&self, key: &str) -> Option<PathBuf> {
        // systemd may set RUNTIME_DIRECTORY to a colon-separated list when a
        // unit has several; the first is ours.
        let v = self.vars.get(key)?;
        let s = v.to_string_lossy();
        let first = s.split(':').next().unwrap_or_default();
        (!first.is_empty()).then(|| PathBuf::from(first))
    }
}

#[cfg(unix)]
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(not(unix))]
fn current_uid() -> u32 {
    0
}

/// The control socket of `instance`.
pub fn socket_path(instance: &str, explicit: Option<&Path>, env: &Env) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = env.get("PEERD_SOCKET") {
        return p;
    }
    if cfg!(windows) {
        return PathBuf::from(format!("peerd-{instance}"));
    }
    if let Some(p) = env.get("RUNTIME_DIRECTORY") {
        return p.join(SOCKET_FILE);
    }
    runtime_base(env).join(instance).join(SOCKET_FILE)
}

/// The directory under which each instance has its runtime directory when
/// nothing more specific is set: where `peerctl` looks for running ones.
pub fn runtime_base(env: &Env) -> PathBuf {
    if env.uid == 0 {
        env.system_base.clone()
    } else if let Some(p) = env.get("XDG_RUNTIME_DIR") {
        p.join("peerd")
    } else {
        PathBuf::from(format!("/tmp/peerd-{}", env.uid))
    }
}

/// What looking at a path found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It exists (for a socket: a daemon may be listening on it).
    Present,
    /// It does not exist.
    Absent,
    /// A folder on the way may not be searched by this user: whether the
    /// daemon runs is hidden, and connecting would fail the same way.
    Denied,
}

/// Look at `path` without following a final symlink.
pub fn probe(path: &Path) -> Probe {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Probe::Present,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Probe::Denied,
        Err(_) => Probe::Absent,
    }
}

/// The folders under which `peerctl` looks for instances' runtime
/// directories: this user's [`runtime_base`], then the system service's.
pub fn search_bases(env: &Env) -> Vec<PathBuf> {
    let mut bases = vec![runtime_base(env)];
    if cfg!(unix) && !bases.contains(&env.system_base) {
        bases.push(env.system_base.clone());
    }
    bases
}

/// The control socket `peerctl` should use for `instance`, and what is
/// there. An explicit socket (`--socket`, `$PEERD_SOCKET`,
/// `$RUNTIME_DIRECTORY`) is taken as it is. Otherwise the first of
/// [`search_bases`] that has the socket wins; failing that, one this user
/// may not look into (so the error can say how to get access); failing
/// that, this user's own path ([`socket_path`]), which does not exist.
pub fn locate_socket(instance: &str, explicit: Option<&Path>, env: &Env) -> (PathBuf, Probe) {
    let own = socket_path(instance, explicit, env);
    if explicit.is_some() || cfg!(windows) || explicit_socket(env) {
        let found = probe(&own);
        return (own, found);
    }
    let mut denied = None;
    for base in search_bases(env) {
        let p = base.join(instance).join(SOCKET_FILE);
        match probe(&p) {
            Probe::Present => return (p, Probe::Present),
            Probe::Denied if denied.is_none() => denied = Some(p),
            _ => {}
        }
    }
    match denied {
        Some(p) => (p, Probe::Denied),
        None => (own, Probe::Absent),
    }
}

/// Whether the environment names the control socket itself
/// (`$PEERD_SOCKET`, or `$RUNTIME_DIRECTORY` under a service manager), so
/// no search applies.
pub fn explicit_socket(env: &Env) -> bool {
    env.get("PEERD_SOCKET").is_some() || env.get("RUNTIME_DIRECTORY").is_some()
}

/// An instance seen under one of the [`search_bases`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    /// Its socket, or the folder this user may not look into.
    pub socket: PathBuf,
    /// What is at `socket` ([`Probe::Present`] or [`Probe::Denied`]).
    pub probe: Probe,
}

/// Instances that have a socket (or a runtime directory this user may
/// not look into) under the [`search_bases`], sorted by name, each once
/// (this user's own first).
pub fn running_instances(env: &Env) -> Vec<Running> {
    let mut found: Vec<Running> = Vec::new();
    for base in search_bases(env) {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        let mut here: Vec<Running> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::valid_instance_name(n))
            .filter(|n| !found.iter().any(|r| &r.name == n))
            .filter_map(|name| {
                let socket = base.join(&name).join(SOCKET_FILE);
                match probe(&socket) {
                    Probe::Absent => None,
                    probe => Some(Running {
                        name,
                        socket,
                        probe,
                    }),
                }
            })
            .collect();
        found.append(&mut here);
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The name of the group that owns `path` (for "join group X"), if the
/// path and the group can be looked up.
#[cfg(unix)]
pub fn owner_group(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(path).ok()?.gid();
    group_name(gid)
}

#[cfg(not(unix))]
pub fn owner_group(_path: &Path) -> Option<String> {
    None
}

/// The name of group `gid` from the group database.
#[cfg(unix)]
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: an all-zero `group` is a valid value for getgrgid_r to fill.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: the pointers are valid for the call, and `buf` outlives
        // every use of the strings getgrgid_r points into it.
        let rc = unsafe {
            libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut out)
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || out.is_null() || grp.gr_name.is_null() {
            return None;
        }
        // SAFETY: getgrgid_r succeeded, so gr_name is a NUL-terminated
        // string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(grp.gr_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(not(unix))]
pub fn group_name(_gid: u32) -> Option<String> {
    None
}

/// The state directory (journal) of `instance`, or `None` when there is no
/// way to find one (not root, no `$XDG_STATE_HOME`, no `$HOME`).
pub fn state_dir(instance: &str, explicit: Option<&Path>, env: &Env) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.get("STATE_DIRECTORY") {
        return Some(p);
    }
    if env.uid == 0 && cfg!(unix) {
        return Some(PathBuf::from("/var/lib/peerd").join(instance));
    }
    if let Some(p) = env.get("XDG_STATE_HOME") {
        return Some(p.join("peerd").join(instance));
    }
    env.get("HOME")
        .map(|h| h.join(".local/state/peerd").join(instance))
}

/// The config file of `instance` when `--config` is not given.
pub fn config_path(instance: &str) -> PathBuf {
    let dir = std::env::var_os("CONFIGURATION_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/peerd"));
    dir.join(format!("{instance}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_precedence() {
        let env = Env::fake(
            1000,
            &[
                ("PEERD_SOCKET", "/x/env.sock"),
                ("RUNTIME_DIRECTORY", "/run/peerd/a"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ],
        );
        let p = |e: &Env| socket_path("a", None, e);
        assert_eq!(
            socket_path("a", Some(Path::new("/flag.sock")), &env),
            Path::new("/flag.sock")
        );
        assert_eq!(p(&env), Path::new("/x/env.sock"));
        let env = Env::fake(
            1000,
            &[
                ("RUNTIME_DIRECTORY", "/run/peerd/a:/other"),
                ("XDG_RUNTIME_DIR", "/r"),
            ],
        );
        assert_eq!(p(&env), Path::new("/run/peerd/a/control.sock"));
        assert_eq!(
            p(&Env::fake(0, &[("XDG_RUNTIME_DIR", "/r")])),
            Path::new("/run/peerd/a/control.sock")
        );
        assert_eq!(
            p(&Env::fake(1000, &[("XDG_RUNTIME_DIR", "/r")])),
            Path::new("/r/peerd/a/control.sock")
        );
        assert_eq!(
            p(&Env::fake(1000, &[])),
            Path::new("/tmp/peerd-1000/a/control.sock")
        );
    }

    #[test]
    fn one_directory_per_instance() {
        let env = Env::fake(0, &[]);
        assert_ne!(
            socket_path("a", None, &env).parent(),
            socket_path("b", None, &env).parent()
        );
    }

    #[test]
    fn state_precedence() {
        let s = |e: &Env| state_dir("a", None, e);
        assert_eq!(
            s(&Env::fake(0, &[("STATE_DIRECTORY", "/sd")])),
            Some("/sd".into())
        );
        assert_eq!(
            s(&Env::fake(0, &[("HOME", "/root")])),
            Some("/var/lib/peerd/a".into())
        );
        assert_eq!(
            s(&Env::fake(1, &[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])),
            Some("/x/peerd/a".into())
        );
        assert_eq!(
            s(&Env::fake(1, &[("HOME", "/h")])),
            Some("/h/.local/state/peerd/a".into())
        );
        assert_eq!(s(&Env::fake(1, &[])), None);
        assert_eq!(
            state_dir("a", Some(Path::new("/f")), &Env::fake(1, &[])),
            Some("/f".into())
        );
    }
}
