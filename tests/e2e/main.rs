//! End-to-end tests: real `peerd` processes on loopback, driven by the real
//! `peerctl` (fixtures in `tests/support`).

mod attach;
mod cli;
mod detach;
mod durability;
mod install;
mod link;
mod plain;
mod service;
mod status;
