//! A UDP proxy that sits between two nodes and mistreats their datagrams.
//!
//! Terms:
//! - The *listen address* is where the proxy receives: the address the
//!   initiator's config names for the peer.
//! - The *target* is the peer daemon's real address.
//! - A *flow* is one client address (a QUIC client endpoint); each gets
//!   its own upstream socket, so the target sees one source per flow and
//!   answers go back to the client they belong to.
//! - *Faults*: each datagram, in either direction, is dropped, duplicated,
//!   held back behind the next one (reordered) or delayed, each with its
//!   own probability, drawn from a seeded generator. A *blackhole* drops
//!   everything from a given number of forwarded bytes on, until lifted:
//!   to the nodes the peer has vanished without closing anything.
//!
//! Every datagram leaves through one scheduler thread that sends each at
//! its due time; a delayed datagram is simply due later.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the receiving threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// The probabilities of each fault, per datagram.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub delay: f64,
    /// The longest delay given to a delayed datagram.
    pub max_delay: Duration,
}

impl Faults {
    /// Every fault with probability `p`, delays up to 20 ms.
    pub fn all(p: f64) -> Faults {
        Faults { drop: p, duplicate: p, reorder: p, delay: p, max_delay: Duration::from_millis(20) }
    }
}

/// What the proxy did, by datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams received from either side.
    pub received: u64,
    /// Bytes received from either side.
    pub bytes: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delayed: u64,
    /// Dropped by the blackhole (not counted in `dropped`).
    pub blackholed: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    delayed: AtomicU64,
    blackholed: AtomicU64,
}

/// A datagram waiting for its due time.
struct Due {
    at: Instant,
    seq: u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    items: HashMap<u64, Due>,
    seq: u64,
}

/// What the threads share.
struct Shared {
    faults: Mutex<Faults>,
    rng: Mutex<u64>,
    counts: Counters,
    /// Blackhole once `bytes` reaches this (`u64::MAX`: never).
    blackhole_at: AtomicU64,
    /// Signalled when the blackhole starts.
    blackholed: (Mutex<bool>, Condvar),
    stop: AtomicBool,
    queue: (Mutex<Queue>, Condvar),
    /// The datagram held back, per direction and flow, to be sent after
    /// the next one.
    held: Mutex<HashMap<(SocketAddr, bool), Due>>,
}

impl Shared {
    /// A uniform number in [0, 1).
    fn roll(&self) -> f64 {
        let mut s = self.rng.lock().unwrap();
        // xorshift64*
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn schedule(&self, d: Due) {
        let (lock, cv) = &self.queue;
        let mut q = lock.lock().unwrap();
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Reverse((d.at, seq)));
        q.items.insert(seq, d);
        cv.notify_one();
    }

    /// Passes one datagram received from `from`, to go out of `socket` to
    /// `to`, through the faults. `upstream` says the direction.
    fn pass(&self, socket: &Arc<UdpSocket>, from: SocketAddr, to: SocketAddr, upstream: bool, data: &[u8]) {
        let c = &self.counts;
        c.received.fetch_add(1, Ordering::Relaxed);
        let total = c.bytes.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
        if total >= self.blackhole_at.load(Ordering::Relaxed) {
            c.blackholed.fetch_add(1, Ordering::Relaxed);
            let (lock, cv) = &self.blackholed;
            *lock.lock().unwrap() = true;
            cv.notify_all();
            return;
        }
        let f = *self.faults.lock().unwrap();
        if self.roll() < f.drop {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut at = Instant::now();
        if self.roll() < f.delay {
            c.delayed.fetch_add(1, Ordering::Relaxed);
            at += f.max_delay.mul_f64(self.roll());
        }
        let copies = if self.roll() < f.duplicate {
            c.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        let key = (if upstream { from } else { to }, upstream);
        let held = self.held.lock().unwrap().remove(&key);
        if held.is_none() && self.roll() < f.reorder {
            // Held back until the next datagram of this flow and direction
            // has gone out.
            c.reordered.fetch_add(1, Ordering::Relaxed);
            let d = Due { at, seq: 0, socket: Arc::clone(socket), to, data: data.to_vec() };
            self.held.lock().unwrap().insert(key, d);
            return;
        }
        for _ in 0..copies {
            self.schedule(Due { at, seq: 0, socket: Arc::clone(socket), to, data: data.to_vec() });
        }
        if let Some(mut h) = held {
            h.at = h.at.max(at);
            self.schedule(h);
        }
    }
}

/// A running proxy; stopped when dropped.
pub struct UdpProxy {
    listen: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpProxy {
    /// A proxy receiving on `listen` (port 0: any free one) and forwarding
    /// to `target`, with `faults` drawn from a generator seeded by `seed`.
    pub fn start(listen: SocketAddr, target: SocketAddr, faults: Faults, seed: u64) -> UdpProxy {
        let socket = Arc::new(UdpSocket::bind(listen).unwrap_or_else(|e| panic!("proxy bind {listen}: {e}")));
        socket.set_read_timeout(Some(POLL)).unwrap();
        let listen = socket.local_addr().unwrap();
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            rng: Mutex::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            counts: Counters::default(),
            blackhole_at: AtomicU64::new(u64::MAX),
            blackholed: (Mutex::new(false), Condvar::new()),
            stop: AtomicBool::new(false),
            queue: (Mutex::new(Queue::default()), Condvar::new()),
            held: Mutex::new(HashMap::new()),
        });
        let mut threads = Vec::new();
        let sh = Arc::clone(&shared);
        threads.push(std::thread::spawn(move || scheduler(&sh)));
        let sh = Arc::clone(&shared);
        threads.push(std::thread::spawn(move || downstream(&sh, &socket, listen.ip(), target)));
        UdpProxy { listen, shared, threads }
    }

    /// Where the proxy receives.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// What it has done so far.
    pub fn counts(&self) -> Counts {
        let c = &self.shared.counts;
        Counts {
            received: c.received.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            blackholed: c.blackholed.load(Ordering::Relaxed),
        }
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// Drops every datagram once `bytes` in all have been received.
    pub fn blackhole_after(&self, bytes: u64) {
        self.shared.blackhole_at.store(bytes, Ordering::Relaxed);
    }

    /// Waits (at most `limit`) for the blackhole to start; whether it did.
    pub fn wait_blackholed(&self, limit: Duration) -> bool {
        let (lock, cv) = &self.shared.blackholed;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv.wait_timeout_while(guard, limit, |on| !*on).unwrap();
        *guard
    }

    /// Forwards again.
    pub fn lift_blackhole(&self) {
        self.shared.blackhole_at.store(u64::MAX, Ordering::Relaxed);
        *self.shared.blackholed.0.lock().unwrap() = false;
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.queue.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends each queued datagram at its due time.
fn scheduler(sh: &Shared) {
    let (lock, cv) = &sh.queue;
    let mut q = lock.lock().unwrap();
    while !sh.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match q.heap.peek().copied() {
            Some(Reverse((at, seq))) if at <= now => {
                q.heap.pop();
                let d = q.items.remove(&seq).expect("queued");
                // A full socket buffer drops the datagram, as a network would.
                let _ = d.socket.send_to(&d.data, d.to);
            }
            Some(Reverse((at, _))) => q = cv.wait_timeout(q, at - now).unwrap().0,
            None => q = cv.wait_timeout(q, POLL).unwrap().0,
        }
    }
}

/// Receives from clients on the listen socket and forwards each flow
/// through its own upstream socket; starts a thread per flow for the
/// answers.
fn downstream(sh: &Arc<Shared>, socket: &Arc<UdpSocket>, ip: std::net::IpAddr, target: SocketAddr) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !sh.stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => continue,
        };
        let up = flows.entry(from).or_insert_with(|| {
            let up = Arc::new(UdpSocket::bind((ip, 0)).expect("proxy upstream bind"));
            up.set_read_timeout(Some(POLL)).unwrap();
            let (sh, up2, down) = (Arc::clone(sh), Arc::clone(&up), Arc::clone(socket));
            answers.push(std::thread::spawn(move || upstream(&sh, &up2, &down, from, target)));
            up
        });
        sh.pass(up, from, target, true, &buf[..n]);
    }
    for t in answers {
        let _ = t.join();
    }
}

/// Receives the target's answers for the client at `client` and sends
/// them back through the listen socket.
fn upstream(sh: &Shared, up: &UdpSocket, down: &Arc<UdpSocket>, client: SocketAddr, target: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    while !sh.stop.load(Ordering::Relaxed) {
        match up.recv_from(&mut buf) {
            Ok((n, from)) if from == target => sh.pass(down, target, client, false, &buf[..n]),
            _ => continue,
        }
    }
}
