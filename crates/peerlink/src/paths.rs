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
}

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
        }
    }

    /// A made-up environment, for tests.
    pub fn fake(uid: u32, vars: &[(&str, &str)]) -> Self {
        let vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Self { vars, uid }
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
        PathBuf::from("/run/peerd")
    } else if let Some(p) = env.get("XDG_RUNTIME_DIR") {
        p.join("peerd")
    } else {
        PathBuf::from(format!("/tmp/peerd-{}", env.uid))
    }
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
