//! End-to-end tests: real `peerd` processes on loopback, driven by the real
//! `peerctl` (fixtures in `tests/support`).

mod attach;
mod auth;
mod browser;
mod cli;
mod detach;
mod durability;
mod hostile;
mod install;
mod instances;
mod link;
mod origin;
mod plain;
mod readme;
mod service;
mod status;
mod storage;
mod tls;
