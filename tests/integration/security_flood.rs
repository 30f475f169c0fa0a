//! A stranger without the group key floods a daemon's UDP port with QUIC v1
//! Initial packets carrying only PING and padding: the shape of any
//! client's first packet, which a server must take as the start of a
//! handshake. The daemon must stay small, keep its log short, and keep
//! serving its peers.
//!
//! The packets are built here as RFC 9001 says (Initial keys derived from
//! a fresh random destination connection ID with HKDF-SHA256, AES-128-GCM
//! payload protection, AES header protection), checked against the RFC's
//! test vectors, and sent from many loopback source addresses, so both the
//! bound in all and the bound per source are exercised.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use aws_lc_rs::{aead, hkdf};

use crate::cluster::Cluster;
use crate::common::proc_status_kb;

/// Datagrams sent at most, and for how long at most.
const FLOOD_DATAGRAMS: usize = 100_000;
const FLOOD_TIME: Duration = Duration::from_secs(30);
/// Source addresses the flood comes from (127.P.Q.100 and up, in the
/// cluster's own /24).
const SOURCES: u8 = 100;
/// The daemon's peak resident memory must stay under this. A daemon takes
/// about 20 MB before the flood and 30 MB after it; without the bound,
/// each datagram the daemon took in held about 20 KB (140k took one to
/// 2.9 GB), so this fails after some 4000.
const MAX_RSS_KB: u64 = 100 * 1024;
/// Log lines about failed handshakes the flood may cause at most: the first
/// failure, then one summary per report interval for the time the half-open
/// connections take to time out.
const MAX_FAILURE_LINES: usize = 5;
/// How long the test waits for the daemon's summary of failed handshakes:
/// the flood's half-open connections time out after the handshake timeout
/// (10 s), and the summary comes one report interval (10 s) after the first
/// failure was reported.
const SUMMARY_WAIT: Duration = Duration::from_secs(90);

/// QUIC v1's Initial salt (RFC 9001 §5.2).
const INITIAL_SALT: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f,
    0x0a,
];

/// The smallest datagram a client's Initial may travel in (RFC 9000 §14.1).
const DATAGRAM: usize = 1200;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(secret: &hkdf::Prk, label: &str, out: &mut [u8]) {
    let full = format!("tls13 {label}");
    let info = [&(out.len() as u16).to_be_bytes()[..], &[full.len() as u8], full.as_bytes(), &[0u8]];
    secret.expand(&info, Len(out.len())).expect("expand").fill(out).expect("fill");
}

/// A client's Initial packet protection keys for a destination connection ID.
struct InitialKeys {
    key: [u8; 16],
    iv: [u8; 12],
    hp: [u8; 16],
}

impl InitialKeys {
    fn client(dcid: &[u8]) -> InitialKeys {
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &INITIAL_SALT).extract(dcid);
        let mut client = [0u8; 32];
        expand_label(&initial, "client in", &mut client);
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &client);
        let mut keys = InitialKeys { key: [0; 16], iv: [0; 12], hp: [0; 16] };
        expand_label(&client, "quic key", &mut keys.key);
        expand_label(&client, "quic iv", &mut keys.iv);
        expand_label(&client, "quic hp", &mut keys.hp);
        keys
    }

    fn mask(&self, sample: &[u8]) -> [u8; 5] {
        let hp = aead::quic::HeaderProtectionKey::new(&aead::quic::AES_128, &self.hp).expect("hp key");
        hp.new_mask(sample).expect("mask")
    }
}

/// A protected QUIC v1 Initial from a new client: destination `dcid`, source
/// `scid`, packet number 0, payload one PING frame and padding, in a
/// datagram of [`DATAGRAM`] bytes.
fn ping_initial(dcid: &[u8], scid: &[u8]) -> Vec<u8> {
    const PN_LEN: usize = 4;
    let keys = InitialKeys::client(dcid);
    let mut p = vec![0xc0 | (PN_LEN as u8 - 1)]; // long header, Initial, 4-byte packet number
    p.extend_from_slice(&1u32.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.push(0); // no token
    let header_len = p.len() + 2 + PN_LEN; // 2-byte Length varint
    let payload_len = DATAGRAM - header_len - aead::AES_128_GCM.tag_len();
    let length = PN_LEN + payload_len + aead::AES_128_GCM.tag_len();
    p.extend_from_slice(&(0x4000 | length as u16).to_be_bytes());
    let pn_offset = p.len();
    let pn = 0u32;
    p.extend_from_slice(&pn.to_be_bytes());

    let mut payload = vec![0u8; payload_len];
    payload[0] = 0x01; // PING; the rest is PADDING
    let mut nonce = keys.iv;
    for (n, b) in nonce[8..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= b;
    }
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &keys.key).expect("aead key"));
    let tag = key
        .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(&p[..]), &mut payload)
        .expect("seal");
    p.extend_from_slice(&payload);
    p.extend_from_slice(tag.as_ref());
    assert_eq!(p.len(), DATAGRAM);

    let mask = keys.mask(&p[pn_offset + 4..pn_offset + 20]);
    p[0] ^= mask[0] & 0x0f;
    for (b, m) in p[pn_offset..pn_offset + PN_LEN].iter_mut().zip(&mask[1..]) {
        *b ^= m;
    }
    p
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The flood is only evidence if its packets are what a server must
/// accept: the key schedule and header protection match RFC 9001 A.1/A.2.
#[test]
fn flood_packets_use_the_rfc9001_initial_keys() {
    let keys = InitialKeys::client(&hex("8394c8f03e515708"));
    assert_eq!(keys.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
    assert_eq!(keys.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
    assert_eq!(keys.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
    assert_eq!(keys.mask(&hex("d1b1c98dd7689fb8ec11d242b123dc9b")).to_vec(), hex("437b9aec36"));
}

/// What the flood's sources got back: Initial packets (the daemon decrypted
/// a flood packet and started a handshake) and Retry packets (it asked the
/// source to prove its address instead).
#[derive(Debug, Default)]
struct Answers {
    initials: usize,
    retries: usize,
}

impl Answers {
    fn count(&mut self, datagram: &[u8]) {
        if datagram.len() < 5 || datagram[1..5] != 1u32.to_be_bytes() {
            return;
        }
        match datagram[0] & 0xf0 {
            0xc0 => self.initials += 1,
            0xf0 => self.retries += 1,
            _ => {}
        }
    }
}

/// Bytes waiting in the receive queue of the UDP socket bound to `addr`
/// (from `/proc/net/udp`), and the datagrams it dropped.
///
/// The kernel writes that table a page at a time while sockets come and
/// go (other tests run beside this one), so one read can miss a socket
/// that exists: a few reads are made before the socket counts as gone.
fn udp_queue(addr: SocketAddr) -> (u64, u64) {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port());
    for _ in 0..5 {
        let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
        let found = table.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find_map(|f| {
            (f.get(1) == Some(&local.as_str())).then(|| {
                let rx = f[4].split(':').nth(1).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0);
                (rx, f.last().and_then(|d| d.parse().ok()).unwrap_or(0))
            })
        });
        if let Some(q) = found {
            return q;
        }
    }
    panic!("no UDP socket on {addr} in /proc/net/udp (read 5 times): the daemon is gone")
}

/// Datagrams sent between two looks at the daemon's receive queue, and
/// how full (bytes, kernel accounting) the queue may be before the flood
/// waits for the daemon: 32 datagrams take about 75 KB of a default
/// 208 KiB receive buffer, so none is lost to a full buffer and every one
/// sent costs the daemon its work, as from an attacker who paces well.
const BURST: usize = 32;
const QUEUE_HIGH: u64 = 96 * 1024;

/// Sends up to [`FLOOD_DATAGRAMS`] PING-only Initials to `target`, each
/// with a new connection ID, from [`SOURCES`] addresses in `net`, for at
/// most [`FLOOD_TIME`], as fast as the daemon takes them in; returns how
/// many were sent and the sockets.
fn flood(target: SocketAddr, net: [u8; 3]) -> (usize, Vec<UdpSocket>) {
    let sockets: Vec<UdpSocket> = (0..SOURCES)
        .map(|i| {
            let ip = Ipv4Addr::new(net[0], net[1], net[2], 100 + i);
            let s = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0;
    let mut ids = [0u8; 16];
    while sent < FLOOD_DATAGRAMS && start.elapsed() < FLOOD_TIME {
        if sent % BURST == 0 && udp_queue(target).0 > QUEUE_HIGH {
            // Pacing, not waiting for an outcome: the loop is bounded by
            // count and time either way.
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        getrandom::fill(&mut ids).expect("random");
        let packet = ping_initial(&ids[..8], &ids[8..]);
        match sockets[sent % sockets.len()].send_to(&packet, target) {
            Ok(_) => sent += 1,
            // The socket's send buffer is full: the loop comes back to it.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("send to {target}: {e}"),
        }
    }
    (sent, sockets)
}

/// Reads what came back to the flood's sockets until both kinds of answer
/// were seen or `limit` passed.
fn answers(sockets: &[UdpSocket], limit: Duration) -> Answers {
    let mut got = Answers::default();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    while (got.initials == 0 || got.retries == 0) && start.elapsed() < limit {
        let mut any = false;
        for s in sockets {
            while let Ok(n) = s.recv(&mut buf) {
                got.count(&buf[..n]);
                any = true;
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    got
}

fn failure_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("handshake")).collect()
}

#[test]
fn a_flood_of_initial_packets_leaves_the_daemon_small_and_serving() {
    let mut c = Cluster::new(2);
    crate::common::write(&c.path("a", "after-the-flood"), b"still syncing\n");
    c.start("b");
    let pid = c.daemon_pid("b");
    let b = c.node("b").clone();
    let target = SocketAddr::from((b.ip, b.port));
    let [_, p, q, _] = b.ip.octets();
    let rss_before = proc_status_kb(pid, "VmRSS");

    let started = Instant::now();
    let (sent, sockets) = flood(target, [127, p, q]);
    let took = started.elapsed();
    let got = answers(&sockets, Duration::from_secs(10));
    drop(sockets);
    let peak = proc_status_kb(pid, "VmHWM");
    eprintln!(
        "flood: {sent} datagrams from {SOURCES} sources in {took:.1?} ({} dropped by the daemon's socket); \
         answered with {} Initial and {} Retry packets (seen); daemon RSS {rss_before} kB before, peak {peak} kB",
        udp_queue(target).1,
        got.initials,
        got.retries
    );
    // The packets were valid: the daemon decrypted some and started
    // handshakes for them (it answers a PING with an Initial ACK).
    assert!(got.initials > 0, "the daemon answered no flood packet with an Initial: the flood proves nothing");
    assert!(peak < MAX_RSS_KB, "the flood took the daemon to {peak} kB (bound {MAX_RSS_KB} kB)");
    // The rest of the sources were asked to validate their address.
    assert!(got.retries > 0, "the daemon never asked a flood source for address validation");

    // A peer still syncs through the daemon right after the flood, while
    // the flood's half-open connections are still waiting to time out.
    c.sync_ok("a");
    assert_eq!(std::fs::read(c.path("b", "after-the-flood")).unwrap(), b"still syncing\n");

    // The failures are reported: first one line, then a summary with the
    // count; not a line per half-open connection.
    let start = Instant::now();
    while !c.log("b").contains("more handshakes failed") {
        assert!(
            start.elapsed() < SUMMARY_WAIT,
            "no summary of failed handshakes within {SUMMARY_WAIT:?}; log has {} such lines",
            failure_lines(&c.log("b")).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = c.log("b");
    let lines = failure_lines(&log);
    assert!(lines.len() <= MAX_FAILURE_LINES, "{} lines about failed handshakes:\n{}", lines.len(), lines.join("\n"));
    let peak = proc_status_kb(pid, "VmHWM");
    assert!(peak < MAX_RSS_KB, "the daemon reached {peak} kB (bound {MAX_RSS_KB} kB)");
    eprintln!("after: daemon RSS {} kB, peak {peak} kB; log:\n{}", proc_status_kb(pid, "VmRSS"), lines.join("\n"));
}
