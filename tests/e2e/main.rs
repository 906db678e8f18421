//! End-to-end tests: real `peerd` processes on loopback, driven by the real
//! `peerctl` (fixtures in `tests/support`).

mod attach;
mod cli;
mod link;
mod plain;
mod status;
