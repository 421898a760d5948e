//! Socket options of the data path: the agent's mark, transparent binds, the original
//! destination, TCP_NODELAY, and resets.
//!
//! Decides: how every socket the core opens is set up — SO_MARK 0x539 (the capture
//! rules skip it), TCP_NODELAY (Nagle + delayed ACK cost ~88 ms per request through a
//! relay, NOTES.md), IP_TRANSPARENT when the pod's source address is kept. Must never:
//! open a socket without the mark (it would be captured again: a loop).

use crate::h2stream::Ended;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// The agent's packet mark (agent.AGENT_MARK): capture never steers marked traffic.
pub const AGENT_MARK: u32 = 0x539;

/// TPROXY delivers with the original destination as the local address.
pub fn original_dst(s: &TcpStream) -> io::Result<SocketAddr> {
    s.local_addr()
}

pub fn nodelay(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}

/// A connected, marked, no-delay socket to `dst`; bound to `bind` with IP_TRANSPARENT
/// when the source address must be kept (a pod's address this host does not own).
pub async fn connect(
    dst: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let domain = Domain::for_address(dst);
    let s = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_mark(AGENT_MARK)?;
    s.set_nodelay(true)?;
    if let Some(ip) = bind.filter(|ip| ip.is_ipv4() == dst.is_ipv4()) {
        if ip.is_ipv4() {
            s.set_ip_transparent(true)?;
        } else {
            set_ipv6_transparent(&s)?;
        }
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    let sock = TcpSocket::from_std_stream(s.into());
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

fn set_ipv6_transparent(s: &Socket) -> io::Result<()> {
    const IPV6_TRANSPARENT: libc::c_int = 75;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_IPV6,
            IPV6_TRANSPARENT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_LINGER 0: the close that follows sends an RST, so a reset on one side reaches
/// the other. A negative fd (a leg that is an HTTP/2 stream, which resets with
/// RST_STREAM instead) is left alone.
pub fn reset_on_close(fd: RawFd) {
    if fd < 0 {
        return;
    }
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is open (its owner is alive) and `l` is a linger struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A classification of an I/O error as the close reason the records carry.
pub fn reason(e: &io::Error) -> String {
    // an HBONE stream's named end (its connection lost, a GOAWAY): h2stream.rs
    if let Some(Ended(why)) = e.get_ref().and_then(|i| i.downcast_ref()) {
        return (*why).into();
    }
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::BrokenPipe => "broken_pipe".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::ConnectionRefused => "refused".into(),
        _ => match e.raw_os_error() {
            Some(n) => format!("error: {}", io::Error::from_raw_os_error(n)),
            None => format!("error: {e}"),
        },
    }
}
