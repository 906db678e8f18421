//! a and b over TLS (`wss://`) with certificates made by the test, and a
//! dialler that trusts the wrong CA is refused.

use std::path::Path;
use std::time::Duration;

use peerlink_e2e::{Daemon, FAST_TIMERS, Sandbox, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::auth::{SECRET, secret_line};

const LONG: Duration = Duration::from_secs(20);

/// A CA; writes `<name>-ca.pem` and returns the issuer to sign leaves.
pub fn ca(dir: &Path, name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("peerlink test CA {name}"));
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
        .expect("self-sign the CA");
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write ca");
    ca
}

/// A certificate for 127.0.0.1 signed by `ca`: writes `<node>.crt` and
/// `<node>.key`.
pub fn leaf(dir: &Path, node: &str, ca: &CertifiedIssuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, node);
    let cert = params.signed_by(&key, ca).expect("sign the leaf");
    std::fs::write(dir.join(format!("{node}.crt")), cert.pem()).expect("write cert");
    std::fs::write(dir.join(format!("{node}.key")), key.serialize_pem()).expect("write key");
}

/// Config of `node` listening with TLS on `port`, dialling `peer` at
/// `peer_port` over wss:// and trusting `ca_file`.
fn config(node: &str, port: u16, peer: &str, peer_port: u16, ca_file: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\n{FAST_TIMERS}\n{}\n\
         [tls]\ncert = \"{node}.crt\"\nkey = \"{node}.key\"\nca = \"{ca_file}\"\n\n\
         [[peer]]\nname = \"{peer}\"\nurl = \"wss://127.0.0.1:{peer_port}/ws\"\n",
        secret_line(SECRET)
    )
}

#[test]
fn a_and_b_over_tls_and_a_dialler_with_the_wrong_ca_is_refused() {
    let sb = Sandbox::new();
    let dir = sb.path();
    let good = ca(dir, "good");
    let _rogue = ca(dir, "rogue");
    leaf(dir, "a", &good);
    leaf(dir, "b", &good);
    leaf(dir, "x", &good);
    let (a_port, b_port) = (free_port(), free_port());
    let a = sb.spec("a", &config("a", a_port, "b", b_port, "good-ca.pem"));
    let b = sb.spec("b", &config("b", b_port, "a", a_port, "good-ca.pem"));
    let (a, b) = (Daemon::start(&a), Daemon::start(&b));
    a.wait_connected("b");
    b.wait_connected("a");
    a.send(&["over tls from a"]);
    b.send(&["over tls from b"]);
    b.wait(LONG, "b receives a's message", |b| {
        b.bodies() == ["over tls from a"]
    });
    a.wait(LONG, "a receives b's message", |a| {
        a.bodies() == ["over tls from b"]
    });

    // x knows the secret and claims to be a, but trusts another CA: it
    // must not accept b's certificate, so it never gets to send.
    let x = sb.spec(
        "x",
        &format!(
            "node = \"a\"\n{}",
            config("x", free_port(), "b", b_port, "rogue-ca.pem")
        ),
    );
    let x = Daemon::start(&x);
    x.send(&["from the wrong-CA dialler"]);
    x.wait(LONG, "x refuses b's certificate", |x| {
        x.peer("b")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS") && e.contains("certificate"))
    });
    assert!(
        x.spec.log().contains("UnknownIssuer") || x.spec.log().contains("unknown issuer"),
        "x's log names the reason:\n{}",
        x.spec.log()
    );
    assert_ne!(x.peer("b")["state"], "connected");
    assert_eq!(b.bodies(), ["over tls from a"], "b's inbox unchanged");
    assert_eq!(b.peer("a")["state"], "connected");

    // A plain ws:// dialler cannot talk to the TLS listener either.
    let plain = sb.spec(
        "y",
        &format!(
            "node = \"a\"\n{}",
            Sandbox::config("y", free_port(), &[("b", b_port)], &secret_line(SECRET))
        ),
    );
    let plain = Daemon::start(&plain);
    plain.wait(LONG, "a plain dialler fails against TLS", |d| {
        d.peer("b")["last_error"].as_str().is_some()
    });
    assert_ne!(plain.peer("b")["state"], "connected");
    assert_eq!(b.bodies(), ["over tls from a"]);
}
