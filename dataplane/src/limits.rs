//! Every bound of the native data plane, in one place, each with why.
//!
//! Decides: how much the core may hold (connections, pending decisions, queued events,
//! buffers) and how long it waits. Must never: be read from anywhere but here, or be
//! changed without the reason next to it.

use std::time::Duration;

/// Connections waiting for Python's decision. While Python is slow new connections wait
/// here; past it they are refused (counted as `pending_full`). 4,096 is one listen
/// backlog's worth: a burst the kernel would have queued anyway.
pub const MAX_PENDING: usize = 4096;

/// Progress records queued for Python. Decision events (at most two per pending
/// decision) and finished records (one per connection, bounded by
/// `dataplane.max_connections`) are never dropped, so the queue is bounded by those
/// two bounds plus this; past it, progress records are dropped and counted
/// (`events_dropped`) — the finished record carries the final counts anyway.
pub const MAX_EVENTS: usize = 16_384;

/// A decision Python has not made in this long refuses the connection
/// (`decision_timeout`): the agent's trio thread is stuck, the client should not be.
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(10);

/// The CONNECT head (request or response) is limited to 16 KiB (SPEC.md: 431 beyond).
pub const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// Headers parsed in a CONNECT head; a request has four, more is abuse (431).
pub const MAX_CONNECT_HEADERS: usize = 64;

/// Copy buffers grow with use, as ztunnel's: a direction starts at 1 KiB, a read that
/// fills the buffer moves it to the next size, and a drained, idle direction holds
/// nothing. 256 KiB is where throughput stops improving (NOTES.md: 64 KiB halved it).
pub const BUFFER_SIZES: [usize; 3] = [1024, 16 * 1024, 256 * 1024];

/// How often live connections are swept for the idle timeout and report progress.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A live connection reports its byte counts this often (bytes as they flow, issue 20).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Events handed to Python per `events()` call: keeps one trio turn short (a few ms).
pub const EVENT_BATCH: usize = 512;
