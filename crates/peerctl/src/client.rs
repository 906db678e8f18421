//! Finding the daemon and talking to it: the client side of
//! `peerlink::control`.

use std::path::{Path, PathBuf};

use peerlink::control::{MAX_FRAME, PROTOCOL_VERSION, Request, Response};
use peerlink::endpoint::{self, RecvHalf, SendHalf};
use peerlink::frame::{self, FrameError, Reader, Writer};
use peerlink::paths::{self, Env};

use crate::error::CtlError;

/// Which daemon to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    pub instance: String,
    pub socket: PathBuf,
}

impl Target {
    /// Resolve `-i` and `--socket` by the shared path rule. Without an
    /// instance: the only running one, else `a`.
    pub fn resolve(instance: Option<&str>, socket: Option<&Path>) -> Result<Target, CtlError> {
        let env = Env::current();
        let instance = match instance {
            Some(i) => i.to_string(),
            None if socket.is_none() => running_instances(&env)
                .pop()
                .unwrap_or_else(|| "a".to_string()),
            None => "a".to_string(),
        };
        if !peerlink::valid_instance_name(&instance) {
            return Err(CtlError::Usage(format!(
                "invalid instance name {instance:?}"
            )));
        }
        let mut path = paths::socket_path(&instance, socket, &env);
        // A user running peerctl against a system service: its socket is
        // under /run/peerd even though ours would be elsewhere.
        if socket.is_none() && !path.exists() {
            let system = Path::new("/run/peerd")
                .join(&instance)
                .join(paths::SOCKET_FILE);
            if system.exists() {
                path = system;
            }
        }
        Ok(Target {
            instance,
            socket: path,
        })
    }
}

/// Instances with a socket under the default runtime base, if exactly one.
fn running_instances(env: &Env) -> Vec<String> {
    let base = paths::runtime_base(env);
    let mut found: Vec<String> = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(paths::SOCKET_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| peerlink::valid_instance_name(n))
        .collect();
    found.sort();
    if found.len() == 1 { found } else { Vec::new() }
}

/// A connection to the daemon, past the Hello.
pub struct Client {
    pub reader: Reader<RecvHalf>,
    pub writer: Writer<SendHalf>,
    pub daemon_version: String,
    /// The instance the daemon says it is (its Hello).
    pub daemon_instance: String,
}

impl Client {
    pub async fn connect(target: &Target) -> Result<Client, CtlError> {
        let stream = endpoint::connect(&target.socket).await.map_err(|e| {
            if endpoint::is_not_running(&e) {
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
            } if version == PROTOCOL_VERSION => {
                c.daemon_version = daemon_version;
                c.daemon_instance = instance;
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

fn map_frame(e: FrameError) -> CtlError {
    match e {
        // Not `CtlError::Io`: a broken pipe on the control socket is the
        // daemon going away mid-request (a `send` that may not be stored),
        // never the harmless closed stdout that `main` treats as success.
        FrameError::Io(e) => CtlError::Protocol(format!("connection lost: {e}")),
        other => CtlError::Protocol(other.to_string()),
    }
}
