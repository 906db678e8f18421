//! End-to-end tests: real `peerd` processes on loopback, driven by the real
//! `peerctl` (fixtures in `tests/support`).

mod attach;
mod auth;
mod cli;
mod detach;
mod durability;
mod flood;
mod hostile;
mod install;
mod link;
mod messages;
mod plain;
mod service;
mod status;
mod tls;
