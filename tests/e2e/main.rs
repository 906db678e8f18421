//! End-to-end tests: real `peerd` processes on loopback, driven by the real
//! `peerctl` (fixtures in `tests/support`).

mod attach;
mod auth;
mod browser;
mod cli;
mod console;
mod detach;
mod durability;
mod flood;
mod hostile;
mod install;
mod instances;
mod limits;
mod link;
mod messages;
mod metrics;
mod origin;
mod peers;
mod plain;
mod readme;
mod reload;
mod service;
mod status;
mod storage;
mod tls;
mod topologies;
