//! The one way to read the journal from the async side: a cursor that
//! reads a chunk at its position (on a blocking thread, never on an async
//! worker), reports what was trimmed before it, and waits for new records.
//! Peer sessions read the outbox through one; `tail` and plain WebSocket
//! clients read the inbox through one.

use tokio::sync::watch;

use super::{InboxRead, Journal, JournalError, OutboxRead};

/// Which log a cursor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    Inbox,
    Outbox,
}

/// A position in one log, and a watch on its end.
pub struct Cursor {
    journal: Journal,
    /// The next record to read.
    pub next: u64,
    end: watch::Receiver<u64>,
}

/// What one read of the inbox found.
#[derive(Debug, Default)]
pub struct InboxChunk {
    /// Records `from..resume_at` were trimmed by retention before the
    /// cursor got to them; the cursor moved past them.
    pub gap: Option<(u64, u64)>,
    /// Messages (notices and tombstones are skipped, and moved past).
    pub entries: Vec<peerlink::control::Entry>,
}

impl Cursor {
    /// A cursor on `log` at `from`.
    pub fn new(journal: &Journal, log: Log, from: u64) -> Cursor {
        let end = match log {
            Log::Inbox => journal.watch_inbox(),
            Log::Outbox => journal.watch_outbox(),
        };
        Cursor {
            journal: journal.clone(),
            next: from,
            end,
        }
    }

    /// The end of the log (the next number to be written) as last seen;
    /// marks it seen, so [`Cursor::wait`] waits for more than this.
    pub fn end(&mut self) -> u64 {
        *self.end.borrow_and_update()
    }

    /// Read the inbox at the cursor: at most `max_count` messages and
    /// about `max_bytes`; moves the cursor past what was read.
    pub async fn read_inbox(
        &mut self,
        max_count: usize,
        max_bytes: u64,
    ) -> Result<InboxChunk, JournalError> {
        self.end.borrow_and_update();
        let (j, from) = (self.journal.clone(), self.next);
        let read: InboxRead = blocking(move || j.read_inbox(from, max_count, max_bytes)).await?;
        let mut chunk = InboxChunk::default();
        if read.first > self.next {
            chunk.gap = Some((self.next, read.first));
            self.next = read.first;
        }
        self.next = self.next.max(read.next);
        chunk.entries = read.entries;
        Ok(chunk)
    }

    /// Read the outbox at the cursor for `peer` (see
    /// [`Journal::read_outbox`]). The cursor does not move: the session
    /// decides how much of it goes out, then [`Cursor::seek`]s.
    pub async fn read_outbox(
        &mut self,
        max_bytes: u64,
        peer: &str,
    ) -> Result<OutboxRead, JournalError> {
        self.end.borrow_and_update();
        let (j, from, peer) = (self.journal.clone(), self.next, peer.to_string());
        blocking(move || j.read_outbox(from, max_bytes, &peer)).await
    }

    /// Move the cursor.
    pub fn seek(&mut self, to: u64) {
        self.next = to;
    }

    /// Wait until the log grows past what was last seen; `false` when the
    /// journal is closed (the daemon is stopping).
    pub async fn wait(&mut self) -> bool {
        self.end.changed().await.is_ok()
    }
}

/// Run a journal read on a blocking thread.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| JournalError::Storage(format!("reading the journal: {e}")))?
}
