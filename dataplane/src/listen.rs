//! Accept loops on the listening sockets Python created (SO_REUSEPORT, IP_TRANSPARENT).
//!
//! Decides: one task per accepted connection, handed to `outbound` or `inbound` by the
//! listener's kind; when told to stop accepting (drain), the backlog that is already
//! queued is still taken, then the listener is closed so a replacement agent gets every
//! new connection. Must never: end on one failed accept, or decide anything about a
//! connection.

use crate::events::Kind;
use crate::runtime::Shared;
use crate::{inbound, outbound, sockopt};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, kind: Kind) {
    // Linux copies TCP_NODELAY from the listener to what it accepts (Python sets it on
    // every listener): checked once on the first connection, then not set again, one
    // setsockopt less per connection
    let mut inherits: Option<bool> = None;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let nodelay = *inherits.get_or_insert_with(|| s.nodelay().unwrap_or(false));
                    spawn(&shared, s, peer, kind, nodelay)
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    shared.count("accept_errors", 1);
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            _ = shared.stop_accepting.notified() => {
                // the backlog already queued belongs to us: take it, then close
                while let Some(Ok((s, peer))) = poll_fn(|cx| match listener.poll_accept(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending => Poll::Ready(None),
                }).await {
                    spawn(&shared, s, peer, kind, false);
                }
                // others listening on the same stop: let them see it too
                shared.stop_accepting.notify_one();
                return;
            }
        }
    }
}

/// `nodelay`: the socket already has TCP_NODELAY (inherited from the listener).
fn spawn(shared: &Arc<Shared>, s: TcpStream, peer: SocketAddr, kind: Kind, nodelay: bool) {
    let Some(admitted) = shared.admit() else {
        sockopt::reset_on_close(s.as_raw_fd());
        return;
    };
    if !nodelay {
        sockopt::nodelay(&s);
    }
    shared.count("accepted", 1);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _admitted = admitted;
        match kind {
            Kind::Outbound | Kind::Plaintext => {
                outbound::serve_captured(shared, s, peer, kind).await
            }
            // boxed: a tunnel's handshake state would size every captured connection's task
            Kind::Tunnel => Box::pin(inbound::serve_tunnel(shared, s, peer)).await,
        }
    });
}
