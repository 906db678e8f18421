//! TLS for the listener and the dialler (`wss://`), with rustls and its
//! `ring` provider (which needs only a C compiler to build).
//!
//! - Listener: `[tls] cert` (PEM chain, leaf first) and `key` (PEM private
//!   key). With them every connection on `listen` must speak TLS; without
//!   them the listener speaks plain `ws://`.
//! - Dialler: `[tls] ca` (PEM, one or more certificates) is the only trust
//!   anchor for `wss://` peers; no system roots are used. It may be the CA
//!   that signed the peer's certificate, or the peer's own self-signed
//!   certificate (pinning). The name checked is the host of the peer's
//!   URL, so the certificate must name it (DNS name or IP address).
//!
//! The files are read once at start (and by `check-config`); a problem is a
//! config error that names the file.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::transport::Io;

/// The TLS side of a node: what it serves and what it trusts.
#[derive(Clone, Default)]
pub struct Tls {
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
}

impl Tls {
    /// Plain `ws://` both ways.
    pub fn none() -> Tls {
        Tls::default()
    }

    /// Load what `cfg.tls` names.
    pub fn load(cfg: &Config) -> Result<Tls> {
        let mut tls = Tls::none();
        if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
            let chain = certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(cert, e))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| bad(cert, format!("certificate and key do not fit: {e}")))?;
            tls.acceptor = Some(TlsAcceptor::from(Arc::new(server)));
        }
        if let Some(ca) = &cfg.tls.ca {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| bad(ca, e))?;
            }
            let client = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(ca, e))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.connector = Some(TlsConnector::from(Arc::new(client)));
        }
        Ok(tls)
    }

    /// Whether the listener speaks TLS.
    pub fn serves(&self) -> bool {
        self.acceptor.is_some()
    }

    /// The listener's side: TLS if configured, else the TCP stream as is.
    pub async fn accept(&self, tcp: TcpStream) -> std::result::Result<Box<dyn Io>, String> {
        match &self.acceptor {
            None => Ok(Box::new(tcp)),
            Some(a) => match a.accept(tcp).await {
                Ok(s) => Ok(Box::new(s)),
                Err(e) => Err(format!("TLS handshake: {e}")),
            },
        }
    }

    /// The dialler's side, for a `wss://` peer at `host`.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> std::result::Result<TlsStream<TcpStream>, String> {
        let connector = self
            .connector
            .as_ref()
            .ok_or("wss:// needs `[tls] ca` to verify the peer")?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("TLS: bad server name {host:?}: {e}"))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}: {e}"))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn bad(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config {
        path: path.display().to_string(),
        message: format!("TLS: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn config(dir: &Path, tls: &str) -> Config {
        let text = format!("[tls]\n{tls}");
        Config::parse("a", &text, &dir.join("a.toml").display().to_string()).unwrap()
    }

    /// A self-signed certificate given as `ca` pins it.
    #[tokio::test]
    async fn pinned_self_signed_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        write(dir.path(), "c.pem", &cert.pem());
        write(dir.path(), "k.pem", &key.serialize_pem());
        let other_key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&other_key)
            .unwrap();
        write(dir.path(), "other.pem", &other.pem());
        let server = Tls::load(&config(dir.path(), "cert = \"c.pem\"\nkey = \"k.pem\"")).unwrap();
        assert!(server.serves());
        let good = Tls::load(&config(dir.path(), "ca = \"c.pem\"")).unwrap();
        let wrong = Tls::load(&config(dir.path(), "ca = \"other.pem\"")).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                if let Ok(mut s) = server.accept(tcp).await {
                    s.write_all(b"hi").await.unwrap();
                    s.flush().await.unwrap();
                }
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = good.connect("127.0.0.1", tcp).await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = wrong.connect("127.0.0.1", tcp).await.err().unwrap();
        assert!(e.contains("certificate"), "{e}");
        srv.await.unwrap();
    }

    #[test]
    fn unreadable_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "empty.pem", "");
        let e = Tls::load(&config(dir.path(), "ca = \"empty.pem\""))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM"), "{e}");
        let e = Tls::load(&config(dir.path(), "ca = \"missing.pem\""))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
