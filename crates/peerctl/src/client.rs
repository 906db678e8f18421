//! Finding the daemon and talking to it: the client side of
//! `peerlink::control`.

use std::path::{Path, PathBuf};

use peerlink::control::{MAX_FRAME, PROTOCOL_VERSION, Request, Response};
use peerlink::endpoint::{self, RecvHalf, SendHalf};
use peerlink::frame::{self, FrameError, Reader, Writer};
use peerlink::paths::{self, Env, Probe};

use crate::error::CtlError;

/// Which daemon to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    pub instance: String,
    pub socket: PathBuf,
    /// How the daemon was chosen (what errors and notes say about it).
    pub chosen: Chosen,
}

/// How `peerctl` picked the daemon it talks to (README "Which instance").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// `-i NAME` or `$PEERD_INSTANCE`.
    Named,
    /// `--socket PATH` (or `$PEERD_SOCKET`, `$RUNTIME_DIRECTORY`) without a
    /// name: the socket is what the user named.
    Socket,
    /// Nothing named: the only instance running. `peerctl` says which.
    OnlyRunning,
}

/// What `-i`, `--socket` and the running instances select.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One daemon.
    One(Target),
    /// Nothing named and several instances running: `status` shows each,
    /// every other command refuses to guess.
    Several(Vec<Target>),
}

impl Selection {
    /// The one target, or a usage error listing the candidates.
    pub fn one(self) -> Result<Target, CtlError> {
        match self {
            Selection::One(t) => Ok(t),
            Selection::Several(all) => Err(several(&all)),
        }
    }
}

/// The refusal when nothing was named and several instances run.
pub fn several(all: &[Target]) -> CtlError {
    let names: Vec<&str> = all.iter().map(|t| t.instance.as_str()).collect();
    let first = names.first().copied().unwrap_or("a");
    CtlError::Usage(format!(
        "{} peerd instances are running ({}): say which with `-i NAME` (e.g. `peerctl -i {first} ...`) \
         or PEERD_INSTANCE",
        names.len(),
        names.join(", ")
    ))
}

impl Target {
    /// Resolve `-i` and `--socket` by the shared path rule and README
    /// "Which instance": a name or a socket is used as given; with neither,
    /// the only running instance (named on stderr by the caller), several
    /// are [`Selection::Several`], none is an error.
    pub fn resolve(instance: Option<&str>, socket: Option<&Path>) -> Result<Selection, CtlError> {
        Target::resolve_in(instance, socket, &Env::current())
    }

    /// [`Target::resolve`] in a given environment (tests).
    pub fn resolve_in(
        instance: Option<&str>,
        socket: Option<&Path>,
        env: &Env,
    ) -> Result<Selection, CtlError> {
        let explicit_socket = socket.is_some() || paths::explicit_socket(env);
        let (instance, chosen) = match instance {
            Some(i) => (i.to_string(), Chosen::Named),
            None if explicit_socket => ("a".to_string(), Chosen::Socket),
            None => {
                let mut running = paths::running_instances(env);
                match running.len() {
                    0 => {
                        return Err(CtlError::NoneRunning {
                            looked_in: paths::search_bases(env),
                        });
                    }
                    1 => (running.remove(0).name, Chosen::OnlyRunning),
                    _ => {
                        let all = running
                            .into_iter()
                            .map(|r| {
                                if r.probe == Probe::Denied {
                                    return Err(no_access(&r.name, &r.socket));
                                }
                                Ok(Target {
                                    instance: r.name,
                                    socket: r.socket,
                                    chosen: Chosen::OnlyRunning,
                                })
                            })
                            .collect::<Result<Vec<_>, _>>();
                        return Ok(Selection::Several(all?));
                    }
                }
            }
        };
        if !peerlink::valid_instance_name(&instance) {
            return Err(CtlError::Usage(format!(
                "invalid instance name {instance:?}"
            )));
        }
        // A user running peerctl against a system service: its socket is
        // under /run/peerd even though ours would be elsewhere.
        let (path, found) = paths::locate_socket(&instance, socket, env);
        if found == Probe::Denied {
            return Err(no_access(&instance, &path));
        }
        Ok(Selection::One(Target {
            instance,
            socket: path,
            chosen,
        }))
    }

    /// What to tell the user about the choice, if it was not theirs.
    pub fn note(&self) -> Option<String> {
        (self.chosen == Chosen::OnlyRunning).then(|| {
            format!(
                "peerctl: instance '{}' (the only one running; `-i NAME` chooses)",
                self.instance
            )
        })
    }
}

/// The error for a socket this user may not reach: which group gives
/// access (the one owning its runtime directory) and how to join it.
pub fn no_access(instance: &str, socket: &Path) -> CtlError {
    let dir = socket.parent().unwrap_or(socket);
    let group = paths::owner_group(dir)
        .or_else(|| paths::owner_group(socket))
        .unwrap_or_else(|| "peerd".to_string());
    CtlError::NoAccess {
        instance: instance.to_string(),
        path: dir.to_path_buf(),
        group,
    }
}

/// A connection to the daemon, past the Hello.
pub struct Client {
    pub reader: Reader<RecvHalf>,
    pub writer: Writer<SendHalf>,
    pub daemon_version: String,
    /// The instance the daemon says it is (its Hello).
    pub daemon_instance: String,
    /// The daemon's `max_message` (its Hello): larger messages are refused
    /// here, before they are sent.
    pub max_message: u64,
}

impl Client {
    pub async fn connect(target: &Target) -> Result<Client, CtlError> {
        let stream = endpoint::connect(&target.socket).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                no_access(&target.instance, &target.socket)
            } else if endpoint::is_not_running(&e) && target.chosen == Chosen::Socket {
                CtlError::NoDaemonAt {
                    path: target.socket.clone(),
                    source: e,
                }
            } else if endpoint::is_not_running(&e) {
                CtlError::NotRunning {
                    instance: target.instance.clone(),
                    path: target.socket.clone(),
                }
            } else {
                CtlError::Unreachable {
                    path: target.socket.clone(),
                    source: e,
                }
            }
        })?;
        let (rx, tx) = endpoint::split(stream);
        let mut c = Client {
            reader: frame::reader(rx, MAX_FRAME),
            writer: frame::writer(tx, MAX_FRAME),
            daemon_version: String::new(),
            daemon_instance: String::new(),
            max_message: 0,
        };
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client: format!("peerctl {}", peerlink::VERSION),
        };
        c.send(&hello).await?;
        match c.recv().await? {
            Response::Hello {
                version,
                daemon_version,
                instance,
                max_message,
            } if version == PROTOCOL_VERSION => {
                c.daemon_version = daemon_version;
                c.daemon_instance = instance;
                c.max_message = max_message;
                Ok(c)
            }
            Response::Hello {
                version,
                daemon_version,
                ..
            } => Err(CtlError::Protocol(format!(
                "{daemon_version} speaks control protocol {version}, this peerctl {} speaks {PROTOCOL_VERSION}; \
                 use the peerctl that came with the daemon",
                peerlink::VERSION
            ))),
            Response::Error { message, .. } => Err(CtlError::Protocol(message)),
            other => Err(CtlError::Protocol(format!(
                "answered the Hello with {other:?}"
            ))),
        }
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), CtlError> {
        frame::send(&mut self.writer, req).await.map_err(map_frame)
    }

    /// Why `body` cannot be sent through this daemon, if it cannot: empty,
    /// or larger than its `max_message`. `what` names the message.
    pub fn refusal(&self, what: &str, len: usize) -> Option<String> {
        if len == 0 {
            return Some(format!("{what} is empty; empty messages are never stored"));
        }
        (len as u64 > self.max_message).then(|| {
            format!(
                "{what} of {len} bytes is larger than max_message ({}) of instance {}",
                size_setting(self.max_message),
                self.daemon_instance
            )
        })
    }

    /// The next reply's frame, undecoded (to read it in place); a closed
    /// connection is an error here.
    pub async fn recv_frame(&mut self) -> Result<bytes::BytesMut, CtlError> {
        match frame::recv_frame(&mut self.reader)
            .await
            .map_err(map_frame)?
        {
            Some(b) => Ok(b),
            None => Err(CtlError::Protocol(
                "closed the connection (shutting down?)".into(),
            )),
        }
    }

    /// The next reply; a closed connection is an error here.
    pub async fn recv(&mut self) -> Result<Response, CtlError> {
        match frame::recv(&mut self.reader).await.map_err(map_frame)? {
            Some(r) => Ok(r),
            None => Err(CtlError::Protocol(
                "closed the connection (shutting down?)".into(),
            )),
        }
    }
}

/// A size as the config file writes it: `1MiB`, `64KiB`, `1000B`.
pub fn size_setting(b: u64) -> String {
    for (m, u) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if b >= m && b.is_multiple_of(m) {
            return format!("{}{u}", b / m);
        }
    }
    format!("{b}B")
}

fn map_frame(e: FrameError) -> CtlError {
    match e {
        // Not `CtlError::Io`: a broken pipe on the control socket is the
        // daemon going away mid-request (a `send` that may not be stored),
        // never the harmless closed stdout that `main` treats as success.
        FrameError::Io(e) => CtlError::Protocol(format!("connection lost: {e}")),
        other => CtlError::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/run/peerd` holding `instance`'s socket (a plain file: the
    /// discovery only looks, it never connects).
    fn system_base(instances: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in instances {
            std::fs::create_dir(dir.path().join(i)).unwrap();
            std::fs::write(dir.path().join(i).join(paths::SOCKET_FILE), b"").unwrap();
        }
        dir
    }

    #[test]
    fn users_find_the_system_service() {
        let base = system_base(&["b"]);
        let own = tempfile::tempdir().unwrap();
        let env = Env::fake(1000, &[("XDG_RUNTIME_DIR", own.path().to_str().unwrap())])
            .with_system_base(base.path());
        let one = |i: Option<&str>| Target::resolve_in(i, None, &env).unwrap().one().unwrap();
        // no -i: the only running instance, under /run/peerd, and said so
        let t = one(None);
        assert_eq!(t.instance, "b");
        assert_eq!(t.chosen, Chosen::OnlyRunning);
        assert!(t.note().unwrap().contains("'b'"));
        assert_eq!(t.socket, base.path().join("b/control.sock"));
        // -i a: not running anywhere; the message names this user's path
        let t = one(Some("a"));
        assert_eq!(t.socket, own.path().join("peerd/a/control.sock"));
        assert_eq!((t.chosen, t.note()), (Chosen::Named, None));
        // the user's own instance comes first
        std::fs::create_dir_all(own.path().join("peerd/b")).unwrap();
        std::fs::write(own.path().join("peerd/b/control.sock"), b"").unwrap();
        assert_eq!(one(None).socket, own.path().join("peerd/b/control.sock"));
        // two running: no guess; both listed
        std::fs::create_dir_all(own.path().join("peerd/c")).unwrap();
        std::fs::write(own.path().join("peerd/c/control.sock"), b"").unwrap();
        let sel = Target::resolve_in(None, None, &env).unwrap();
        let Selection::Several(all) = &sel else {
            panic!("{sel:?}")
        };
        let names: Vec<&str> = all.iter().map(|t| t.instance.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        let e = sel.one().unwrap_err();
        assert_eq!(e.exit_code(), crate::error::EXIT_USAGE);
        assert!(e.to_string().contains("(b, c)"), "{e}");
        // a name still picks exactly that one
        assert_eq!(one(Some("c")).instance, "c");
    }

    #[test]
    fn nothing_running_and_nothing_named_is_an_error() {
        let base = system_base(&[]);
        let own = tempfile::tempdir().unwrap();
        let env = Env::fake(1000, &[("XDG_RUNTIME_DIR", own.path().to_str().unwrap())])
            .with_system_base(base.path());
        let e = Target::resolve_in(None, None, &env).unwrap_err();
        assert!(matches!(e, CtlError::NoneRunning { .. }), "{e}");
        assert_eq!(e.exit_code(), crate::error::EXIT_UNREACHABLE);
        let msg = e.to_string();
        assert!(msg.contains(&base.path().display().to_string()), "{msg}");
        assert!(msg.contains("peerd a"), "{msg}");
        // a socket named without an instance: the socket is what errors name
        let sel = Target::resolve_in(None, Some(Path::new("run/b.sock")), &env).unwrap();
        assert_eq!(sel.one().unwrap().chosen, Chosen::Socket);
    }

    /// What a user who may not enter `/run/peerd/a` (mode 0750, not in its
    /// group) gets, with and without `-i`: how to get access, never "not
    /// running". Root may enter anything, so as root the check runs in a
    /// copy of this test binary started as user `nobody`.
    #[cfg(unix)]
    #[test]
    fn unreadable_runtime_dir_says_which_group_to_join() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        const VAR: &str = "PEERCTL_TEST_SYSTEM_BASE";
        if let Some(base) = std::env::var_os(VAR) {
            return check_no_access(Path::new(&base));
        }
        let base = system_base(&["a"]);
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(base.path(), 0o755);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            mode(&base.path().join("a"), 0o000);
            check_no_access(base.path());
            mode(&base.path().join("a"), 0o750);
            return;
        }
        mode(&base.path().join("a"), 0o750);
        let bin = tempfile::tempdir().unwrap();
        mode(bin.path(), 0o755);
        let exe = bin.path().join("test-bin");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        mode(&exe, 0o755);
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "client::tests::unreadable_runtime_dir_says_which_group_to_join",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(VAR, base.path())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "as nobody: {text}");
        assert!(text.contains("1 passed"), "the check did not run: {text}");
    }

    fn check_no_access(base: &Path) {
        let env = Env::fake(65534, &[]).with_system_base(base);
        let group = paths::owner_group(&base.join("a")).unwrap();
        for instance in [None, Some("a")] {
            let e = Target::resolve_in(instance, None, &env)
                .and_then(Selection::one)
                .unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, CtlError::NoAccess { .. }), "{msg}");
            assert_eq!(e.exit_code(), crate::error::EXIT_UNREACHABLE);
            assert!(
                msg.contains(&format!("`sudo adduser $USER {group}`")),
                "{msg}"
            );
            assert!(msg.contains("log in again"), "{msg}");
            assert!(msg.contains(&base.join("a").display().to_string()), "{msg}");
            assert!(!msg.contains("not running"), "{msg}");
        }
    }
}
