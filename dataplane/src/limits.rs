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

/// TLS 1.3 session tickets a client configuration keeps per peer (sessions.rs). A
/// handshake takes one and the server sends two (tls.rs), so this is how many
/// handshakes to one peer may start at once and all resume: 64 covers connect-rate's 16
/// in flight four times over. A ticket is a few hundred bytes (the peer's chain is shared).
pub const TLS_TICKETS_PER_PEER: usize = 64;

/// Peers (server names) a client configuration keeps tickets for. A configuration is
/// one (source, expected destination) identity pair, so one name per tunnel protocol
/// in practice; the bound only stops a pathological case from growing.
pub const TLS_TICKET_PEERS: usize = 16;

/// Copy buffers grow with use, as ztunnel's: a direction starts at 1 KiB, a read that
/// fills the buffer moves it to the next size, and a drained, idle direction holds
/// nothing. 256 KiB is where throughput stops improving (NOTES.md: 64 KiB halved it).
pub const BUFFER_SIZES: [usize; 3] = [1024, 16 * 1024, 256 * 1024];

/// glibc malloc, set once for the process when the core starts (threads.rs). By
/// default an allocation over 128 KiB is its own mmap and the heap is trimmed whenever
/// 128 KiB are free at its top (glibc raises both as it sees large frees, to the
/// 256 KiB copy buffer and twice that), so a bulk transfer mapped, unmapped and
/// page-faulted its buffers over and over: 9% of the core's CPU per byte (measured with
/// h2_flow_tests::bulk_cpu: 1.67-1.76 s/GiB with these vs 1.83-1.94 without). Up to
/// 1 MiB is served from the heap; up to 4 MiB free at a heap's top is kept for reuse
/// (the memory an idle agent may hold beyond what it uses, per malloc arena).
pub const MALLOC_MMAP_THRESHOLD: i32 = 1024 * 1024;
pub const MALLOC_TRIM_THRESHOLD: i32 = 4 * 1024 * 1024;

/// How often live connections are swept for the idle timeout and report progress.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Freed heap is handed back to the OS (glibc's `malloc_trim`) once the number of live
/// connections and the connections started moved by TRIM_CHURN since the last time and
/// then held still (moved by less than TRIM_QUIET in one sweep: the burst or the load
/// of short connections is over), at most once per TRIM_EVERY,
/// and once TRIM_EVERY after start (start-up garbage). A burst of connection set-ups
/// leaves holes between the long-lived per-connection allocations that malloc keeps
/// (measured: 8,000 HBONE connections left 12.7 MB free inside node-1's arenas, 8.7 MB of
/// it handed back by one trim taking 1.3 ms, on a blocking thread).
pub const TRIM_CHURN: usize = 1024;
pub const TRIM_QUIET: usize = 64;
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// A live connection reports its byte counts this often (bytes as they flow, issue 20).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Events handed to Python per `events()` call: keeps one trio turn short (a few ms).
/// A queue this full wakes Python whatever the events are.
pub const EVENT_BATCH: usize = 512;

/// A finished or progress record wakes Python within this long when no decision comes
/// first to carry it along (events.rs): nothing waits on them, and under load they ride
/// with the next decision instead of costing Python a wake-up of their own. 2 ms is
/// well inside the telemetry flush (a second) and /v1/connections' use.
pub const QUIET_DELAY: Duration = Duration::from_millis(2);

/// An L7 exchange's record (events.rs) wakes Python within this long when nothing more
/// urgent comes first; a connection's finished record, which follows its exchanges in
/// the queue, takes them along within QUIET_DELAY, and EVENT_BATCH of them wake Python
/// at once. Nothing waits on an exchange (its request was answered already; Python only
/// counts and records it), and each wake-up of Python's event loop is a trio turn of
/// its own: at 1,000 rps the 2 ms delay allowed up to ~500 wake-ups a second per agent,
/// 20 ms at most ~50, 50 ms at most ~20, each taking ~50 records in one batch (a
/// wake-up costs Python a trio turn, the events() call and the world check, ~50 us,
/// docs/dataplane.md "Exchanges in batches"). 50 ms is well inside the telemetry flush
/// (a second) and far below anything an operator reading counters or the access log
/// could notice.
pub const EXCHANGE_DELAY: Duration = Duration::from_millis(50);

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

/// TLS bytes rustls may hold unsent per HBONE connection (its default is 64 KiB): each
/// write of h2's takes up to this much plaintext, so a bulk stream's 256 KiB chunks go
/// out in one write and one sendmsg instead of four. One TLS connection carries many
/// streams, so this is per connection, not per stream. Measured 1-3% less CPU per byte
/// on bulk (agents' CPU in the lab: 1.657-1.681 vs 1.668-1.692 s/GiB on one stream,
/// 1.805-1.848 vs 1.844-1.945 on four).
pub const H2_TLS_BUFFER: usize = 256 * 1024;

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

/// The largest answer a unary gRPC call (grpc.rs: the CA client) reads: gRPC's default
/// receive limit (4 MiB). A certificate chain is a few KiB; more is a broken server.
pub const GRPC_MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Allowed answers Python let one L7 connection reuse (l7memo.rs): a keep-alive
/// connection's clients send a few distinct heads over and over (a health check, an API
/// call); 32 covers them at ~200 B each, and past it the memo starts again empty (a
/// connection that sends ever new paths asks Python each time, as without the memo).
pub const MAX_L7_MEMO: usize = 32;

/// Requests one watched connection (the source's view, l7watch.rs) may have sent ahead
/// of their responses: pipelining clients send a few; past 128 the connection is no
/// longer watched (its bytes go on; `l7_watch_lost_too_many_requests_in_flight`), so
/// a client that never reads cannot grow the watch's queue.
pub const MAX_L7_WATCHED: usize = 128;

/// Python's answers for repeat tunnel flows the core keeps (decisions.rs). One entry per
/// (peer identity, peer address, target, ...) a node sees under one generation: 4,096
/// covers every pod pair of a busy node; past it the table is emptied (counted
/// `decision_cache_evicted`) and refilled by the next decisions Python makes.
pub const MAX_CACHED_DECISIONS: usize = 4096;
