//! End-to-end tests: real `peerd` processes on loopback, driven by the real
//! `peerctl` (fixtures in `tests/support`).

mod auth;
mod cli;
mod hostile;
mod link;
mod tls;
