//! Datagrams in batches: one system call for many.
//!
//! A system call is dear on the machines conclave runs on (with the SRSO and
//! retpoline mitigations a bare one costs about 0.3 µs, and every return to
//! user space is a chance to be preempted), and a forwarded packet is one
//! datagram per subscriber. So nothing in a room's media task sends on its
//! own: what its peer connections write during one wake (a publisher
//! packet's whole fan-out, the replies to a batch of inbound datagrams, the
//! timers of a tick) waits in a [`SendBatch`] and leaves with `sendmmsg`,
//! up to [`CHUNK`] datagrams a call. The reader of a port takes what
//! arrived the same way, with `recvmmsg` ([`recv_batch`]).
//!
//! The datagrams keep the buffers the peer connection wrote them into; a
//! batch only holds them, with their destinations, until the flush. Its
//! vectors keep their capacity, so a room that forwards steadily does not
//! allocate here at all. Other systems than Linux send one at a time.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use bytes::BytesMut;

/// Datagrams handed to the kernel in one call, and received in one: the
/// headers live on the stack (about 13 KiB at 64), so the batch owns no
/// pointers and stays `Send`.
pub(crate) const CHUNK: usize = 64;

/// Datagrams held before a flush is forced, whatever the wake still has to
/// do: bounds the memory a burst can hold (a 2,000-member fan-out).
const HOLD_AT_MOST: usize = 1024;

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    pub sent: usize,
    /// The socket's send buffer was full: dropped, as a router would.
    pub dropped: usize,
    /// Refused by the kernel for their destination (unreachable, say).
    pub failed: usize,
    pub calls: usize,
}

impl Flushed {
    fn add(&mut self, other: Flushed) {
        self.sent += other.sent;
        self.dropped += other.dropped;
        self.failed += other.failed;
        self.calls += other.calls;
    }
}

/// Datagrams waiting for one socket.
pub(crate) struct SendBatch {
    socket: Arc<UdpSocket>,
    queued: Vec<(BytesMut, SocketAddr)>,
    /// Flushes forced by [`HOLD_AT_MOST`] since the last [`SendBatch::flush`].
    early: Flushed,
}

impl SendBatch {
    pub(crate) fn new(socket: Arc<UdpSocket>) -> SendBatch {
        SendBatch {
            socket,
            queued: Vec::new(),
            early: Flushed::default(),
        }
    }

    pub(crate) fn push(&mut self, datagram: BytesMut, to: SocketAddr) {
        self.queued.push((datagram, to));
        if self.queued.len() >= HOLD_AT_MOST {
            let done = self.send_queued();
            self.early.add(done);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.early == Flushed::default()
    }

    /// Sends everything queued; says what became of it (and of what forced
    /// flushes sent since the last call).
    pub(crate) fn flush(&mut self) -> Flushed {
        let mut done = std::mem::take(&mut self.early);
        done.add(self.send_queued());
        done
    }

    fn send_queued(&mut self) -> Flushed {
        let mut done = Flushed::default();
        let mut at = 0;
        while at < self.queued.len() {
            let end = (at + CHUNK).min(self.queued.len());
            match send_chunk(&self.socket, &self.queued[at..end]) {
                Ok(n) => {
                    done.calls += 1;
                    done.sent += n;
                    at += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    done.calls += 1;
                    done.dropped += self.queued.len() - at;
                    break;
                }
                Err(e) => {
                    // The call stops at the first datagram it cannot send:
                    // that one is lost, the rest go on.
                    tracing::trace!(error = %e, to = %self.queued[at].1, "udp send");
                    done.calls += 1;
                    done.failed += 1;
                    at += 1;
                }
            }
        }
        let used = self.queued.len();
        self.queued.clear();
        // A burst's worth of capacity is not kept by a room that has gone
        // quiet, and not given back by one that keeps using it.
        let capacity = self.queued.capacity();
        if capacity > HOLD_AT_MOST / 4 && used < capacity / 4 {
            self.queued.shrink_to(HOLD_AT_MOST / 4);
        }
        done
    }
}

/// Sends a prefix of `datagrams` (at least one, or an error for the first).
/// The socket is non-blocking and nobody waits for it to become writable:
/// a full send buffer drops the rest, as a router would.
#[cfg(target_os = "linux")]
fn send_chunk(socket: &UdpSocket, datagrams: &[(BytesMut, SocketAddr)]) -> io::Result<usize> {
    use std::mem::MaybeUninit;
    use std::os::fd::AsRawFd;

    debug_assert!(!datagrams.is_empty() && datagrams.len() <= CHUNK);
    let mut addrs: [MaybeUninit<socket2::SockAddr>; CHUNK] =
        [const { MaybeUninit::uninit() }; CHUNK];
    // SAFETY: all-zero is a valid iovec and mmsghdr (null pointers, zero
    // lengths); every entry used below is filled in first.
    let mut iov: [libc::iovec; CHUNK] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
    for (i, (data, to)) in datagrams.iter().enumerate() {
        let addr = addrs[i].write(socket2::SockAddr::from(*to));
        iov[i] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addr.len();
        hdr.msg_iov = &mut iov[i];
        hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdrs[..len]` point at `iov` and `addrs` entries filled
    // above, which point at `datagrams`' bytes; all outlive the call, and
    // the kernel only reads them.
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            datagrams.len() as u32,
            libc::MSG_DONTWAIT,
        )
    };
    // `SockAddr` needs no drop: the uninitialized array is simply forgotten.
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(not(target_os = "linux"))]
fn send_chunk(socket: &UdpSocket, datagrams: &[(BytesMut, SocketAddr)]) -> io::Result<usize> {
    let (data, to) = &datagrams[0];
    socket.send_to(data, *to).map(|_| 1)
}

/// Room for [`CHUNK`] received datagrams of up to `size` bytes each.
pub(crate) struct RecvBuffers {
    bufs: Vec<u8>,
    size: usize,
    lens: [usize; CHUNK],
    from: [Option<SocketAddr>; CHUNK],
    count: usize,
}

impl RecvBuffers {
    pub(crate) fn new(size: usize) -> RecvBuffers {
        RecvBuffers {
            bufs: vec![0; size * CHUNK],
            size,
            lens: [0; CHUNK],
            from: [None; CHUNK],
            count: 0,
        }
    }

    /// What the last [`recv_batch`] received: each datagram's bytes (as
    /// long as it was, up to `size`) and its source.
    pub(crate) fn received(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        (0..self.count).filter_map(move |i| {
            let from = self.from[i]?;
            let start = i * self.size;
            Some((&self.bufs[start..start + self.lens[i]], from))
        })
    }
}

/// Receives what is waiting, up to [`CHUNK`] datagrams, without blocking:
/// `WouldBlock` when nothing is. Fewer than [`CHUNK`] means the socket's
/// queue was empty when the call returned.
#[cfg(target_os = "linux")]
pub(crate) fn recv_batch(socket: &UdpSocket, into: &mut RecvBuffers) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    use socket2::{SockAddr, SockAddrStorage};

    into.count = 0;
    // SAFETY: all-zero is a valid iovec and mmsghdr.
    let mut iov: [libc::iovec; CHUNK] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
    let mut names: [SockAddrStorage; CHUNK] = std::array::from_fn(|_| SockAddrStorage::zeroed());
    let size = into.size;
    for (i, chunk) in into.bufs.chunks_exact_mut(size).enumerate() {
        iov[i] = libc::iovec {
            iov_base: chunk.as_mut_ptr() as *mut libc::c_void,
            iov_len: size,
        };
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = &mut names[i] as *mut SockAddrStorage as *mut libc::c_void;
        hdr.msg_namelen = names[i].size_of();
        hdr.msg_iov = &mut iov[i];
        hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at its own slice of `into.bufs` and its
    // own `names` entry, all alive and writable for the call.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            CHUNK as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        let hdr = &hdrs[i];
        // A datagram longer than its buffer is cut and flagged; the caller
        // sees `size` bytes and treats it as oversized.
        into.lens[i] = (hdr.msg_len as usize).min(size);
        let name = std::mem::replace(&mut names[i], SockAddrStorage::zeroed());
        // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes.
        let addr = unsafe { SockAddr::new(name, hdr.msg_hdr.msg_namelen) };
        into.from[i] = addr.as_socket();
    }
    into.count = n;
    Ok(n)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn recv_batch(socket: &UdpSocket, into: &mut RecvBuffers) -> io::Result<usize> {
    into.count = 0;
    let size = into.size;
    let (n, from) = socket.recv_from(&mut into.bufs[..size])?;
    into.lens[0] = n;
    into.from[0] = Some(from);
    into.count = 1;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::unix::AsyncFd;

    fn pair() -> (Arc<UdpSocket>, AsyncFd<UdpSocket>) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        // SAFETY: the `AsyncFd` owns the socket, so its fd stays open.
        (Arc::new(a), unsafe { AsyncFd::register(b) }.unwrap())
    }

    /// Waits for `b` to hold datagrams, then takes a batch of them.
    async fn receive(b: &AsyncFd<UdpSocket>, bufs: &mut RecvBuffers) -> usize {
        loop {
            let mut ready = b.readable().await.unwrap();
            match ready.try_io(|b| recv_batch(b.get_ref(), bufs)) {
                Ok(got) => return got.unwrap(),
                Err(_would_block) => continue,
            }
        }
    }

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order_over_several_calls() {
        let (a, b) = pair();
        let to = b.get_ref().local_addr().unwrap();
        let mut batch = SendBatch::new(a.clone());
        let n = CHUNK * 2 + 5;
        for i in 0..n {
            batch.push(BytesMut::from(format!("datagram {i}").as_bytes()), to);
        }
        let done = batch.flush();
        assert_eq!(done.sent, n, "{done:?}");
        assert_eq!(done.dropped + done.failed, 0, "{done:?}");
        if cfg!(target_os = "linux") {
            assert_eq!(done.calls, 3, "{done:?}");
        }
        assert!(batch.is_empty());

        let mut bufs = RecvBuffers::new(1501);
        let mut got = Vec::new();
        while got.len() < n {
            receive(&b, &mut bufs).await;
            got.extend(bufs.received().map(|(data, from)| {
                assert_eq!(from, a.local_addr().unwrap());
                String::from_utf8(data.to_vec()).unwrap()
            }));
        }
        let want: Vec<String> = (0..n).map(|i| format!("datagram {i}")).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn one_bad_destination_loses_only_its_own_datagram() {
        let (a, b) = pair();
        let to = b.get_ref().local_addr().unwrap();
        let mut batch = SendBatch::new(a);
        batch.push(BytesMut::from(&b"one"[..]), to);
        // An IPv6 destination on an IPv4 socket: the kernel refuses it.
        batch.push(BytesMut::from(&b"lost"[..]), "[::1]:9".parse().unwrap());
        batch.push(BytesMut::from(&b"two"[..]), to);
        let done = batch.flush();
        assert_eq!((done.sent, done.failed), (2, 1), "{done:?}");
        let mut bufs = RecvBuffers::new(16);
        let mut got = Vec::new();
        while got.len() < 2 {
            receive(&b, &mut bufs).await;
            got.extend(bufs.received().map(|(data, _)| data.to_vec()));
        }
        assert_eq!(got, [&b"one"[..], &b"two"[..]]);
    }

    #[tokio::test]
    async fn an_oversized_datagram_is_cut_to_the_buffer() {
        let (a, b) = pair();
        a.send_to(&[7u8; 40], b.get_ref().local_addr().unwrap())
            .unwrap();
        let mut bufs = RecvBuffers::new(16);
        assert_eq!(receive(&b, &mut bufs).await, 1);
        let (data, _) = bufs.received().next().unwrap();
        assert_eq!(data.len(), 16);
    }
}
