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

// ---- HBONE (HTTP/2 CONNECT tunnels), ztunnel's settings (NOTES.md) ------------------

/// Per-stream receive window: 4 MiB, ztunnel's. A stream whose reader is slow holds at
/// most this much (plus one copy buffer) before the peer must wait: flow control is the
/// memory bound of a stream.
pub const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Connection receive window: 16 MiB, ztunnel's (four busy streams at full speed).
pub const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Largest DATA frame: 1 MiB, ztunnel's (fewer frames per bulk transfer).
pub const H2_MAX_FRAME: u32 = 1024 * 1024;

/// Streams a peer may open on one server connection: 200, ztunnel's; h2 refuses the
/// 201st with RST_STREAM(REFUSED_STREAM).
pub const H2_SERVER_MAX_STREAMS: u32 = 200;

/// Streams the client assumes before the server's SETTINGS arrive: 100, ztunnel's.
pub const H2_CLIENT_INITIAL_STREAMS: usize = 100;

/// Header list the server accepts: 64 KiB; the client's: 16 KiB (ztunnel's). A larger
/// header block is refused by h2 (the stream reset, the connection kept).
pub const H2_SERVER_HEADER_LIST: u32 = 64 * 1024;
pub const H2_CLIENT_HEADER_LIST: u32 = 16 * 1024;

/// Bytes h2 buffers per stream for sending beyond what flow control allows: one copy
/// buffer's worth, so a peer that does not read holds our memory to this per stream.
pub const H2_SEND_BUFFER: usize = 256 * 1024;

/// PING after this long without one, and the connection is dead when no PONG came
/// within H2_PING_TIMEOUT (ztunnel: 10 s / 20 s).
pub const H2_PING_EVERY: Duration = Duration::from_secs(10);
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A pooled client connection with no stream for this long is closed (ztunnel: 5 min).
pub const POOL_IDLE: Duration = Duration::from_secs(300);

/// Header values the server reads from a CONNECT (baggage, traceparent): longer ones are
/// dropped, not refused (telemetry only; the header list bound protects memory).
pub const MAX_TELEMETRY_HEADER: usize = 4096;

// ---- L7 (HTTP/1.1 ports with per-request rules: l7.rs) -------------------------------

/// A request head is limited to 16 KiB (SPEC.md, as the h11 inspector's: 431 beyond).
/// hyper's read buffer is the head's bound, so it is set to exactly this.
pub const MAX_L7_HEAD: usize = 16 * 1024;

/// Field lines in one request head: 100, Envoy's `max_headers_count` default (and
/// hyper's); more is answered 431.
pub const MAX_L7_HEADERS: usize = 100;

/// A workload's response head may be larger (cookies): up to 64 KiB, past Envoy's 60 KiB
/// default, as the h11 inspector allowed.
pub const MAX_L7_RESPONSE_HEAD: usize = 64 * 1024;

/// Request heads waiting for Python's answer, over all connections. One listen
/// backlog's worth, as MAX_PENDING: a burst while Python is slow waits; past it a head
/// is answered 503 and its connection closes (`l7_refused_pending_full`).
pub const MAX_L7_PENDING: usize = 4096;

/// After the core ends an L7 connection in order (a `Connection: close` exchange, a
/// 400), it reads and drops what the pod still sends for at most this long before the
/// socket goes (RFC 9112 9.6's staged close: a reset would cut the response).
pub const L7_LINGER: Duration = Duration::from_secs(2);
