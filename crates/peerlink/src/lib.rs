//! What `peerd` and `peerctl` both speak.
//!
//! - [`codec`]: the one place values become bytes and back (bincode, pinned,
//!   always with a size limit), so swapping the encoding is one file.
//! - [`frame`]: length-prefixed framing of codec values over a byte stream.
//! - [`control`]: the peerctl ↔ peerd protocol, its version rule and limits.
//! - [`paths`]: where an instance keeps its control socket and its state.
//! - [`endpoint`]: binding and connecting the control socket (`interprocess`).

pub mod codec;
pub mod control;
pub mod endpoint;
pub mod frame;
pub mod paths;

/// The version of the peerlink binaries, shown by `status` and the handshakes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Instance names: `[a-z0-9][a-z0-9_-]{0,31}` (SPEC §2). They end up in
/// file paths, unit names and peer handshakes, so they are kept boring.
pub fn valid_instance_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {}
        _ => return false,
    }
    bytes.len() <= 32
        && bytes
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Milliseconds since the Unix epoch, the one clock in the wire and journal.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        for ok in ["a", "b", "0", "node-1", "x_y", &"a".repeat(32)] {
            assert!(valid_instance_name(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "_a", "a.b", "a/b", "ä", &"a".repeat(33)] {
            assert!(!valid_instance_name(bad), "{bad}");
        }
    }
}
