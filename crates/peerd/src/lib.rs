//! `peerd`: keeps one authenticated WebSocket link to each peer daemon and
//! delivers messages across it exactly once, in order.
//!
//! Data flows one way:
//!
//! ```text
//! peer session (ws in) ──┐                              ┌──▶ peer session (ws out)
//! plain client (ws in) ──┼──▶ journal: append, assign ──┼──▶ plain clients
//! peerctl send ──────────┘    seq, store, publish       └──▶ peerctl tail
//! ```
//!
//! | module      | owns                                                     |
//! |-------------|----------------------------------------------------------|
//! | `cli`       | the command line (also feeds man page and completions)   |
//! | `config`    | the effective configuration and its file format          |
//! | `journal`   | outbox, inbox, per-peer delivery state; the only writer  |
//! | `wire`      | the peer protocol (frames, version, limits)              |
//! | `handshake` | the Hello exchange and the mutual authentication         |
//! | `auth`      | the pre-shared secret and its HMAC proofs                |
//! | `access`    | who may read the secret and the files the service reads  |
//! | `tls`       | TLS for the listener and the dialler (rustls)            |
//! | `dial`      | dialling a peer                                          |
//! | `listener`  | accepting peers on `listen`                              |
//! | `origin`    | which web pages may connect (`Origin`, `Host` checks)    |
//! | `admission` | the listener's pending-handshake slots, fair under floods |
//! | `plain`     | plain WebSocket clients (no `peerlink.v1`, SPEC §7)      |
//! | `link`      | one task per peer: backoff, collisions, link status      |
//! | `session`   | one live session: data, acks, heartbeats                 |
//! | `server`    | the control socket (`peerctl`)                           |
//! | `reload`    | what a reload may change live; the settings of the moment |
//! | `service`   | signals, systemd notification, `--daemon`                |
//! | `daemon`    | wiring it all together and shutting it down              |

pub mod access;
pub mod admission;
pub mod auth;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dial;
pub mod error;
pub mod handshake;
pub mod journal;
pub mod link;
pub mod listener;
pub mod origin;
pub mod plain;
pub mod reload;
pub mod server;
pub mod service;
pub mod session;
pub mod status;
pub mod tls;
pub mod transport;
pub mod units;
pub mod wire;

pub use error::{Error, Result};
