//! Whether compressing a chunk for a peer is worth its CPU time.
//!
//! Compression spends this host's processor time to save time on the link:
//! zstd's level 1 takes about 5 ns a byte of text-like data here, and
//! QUIC's encryption and packet handling about 2 ns a byte on each side.
//! While a processor is idle (the link is the bottleneck: a LAN, a WAN),
//! compressing costs nothing that was not free and the link carries less.
//! While every processor is busy (the transfer is CPU-bound, as on fast
//! links and loopback), each byte compressed costs more time than the
//! bytes it saves, and slows the other work of the host. So a chunk read
//! from a file is compressed for a peer only while this host's processors
//! had room to spare over the last sampling interval; otherwise it goes
//! raw (its stored form either way: the receiver handles both). Chunks a
//! chunk store already holds compressed go as they are stored.
//!
//! The measure is the share of idle time of all processors in
//! `/proc/stat`, sampled at most every [`SAMPLE_EVERY`]. Where that file
//! cannot be read (not Linux), chunks are always compressed, as before.
//! The test hook [`COMPRESS_ENV`] (`always` or `never`) fixes the choice.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the processors' idle share is sampled, at most.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The processors have room to compress while at least this share of
/// their time was idle (`idle` and `iowait`) over the last interval.
/// During a CPU-bound transfer the idle share stays below 5%.
pub const ROOM: f64 = 0.15;

/// Test hook: `always` or `never` fixes whether chunks read from files
/// are compressed for peers; read once.
pub const COMPRESS_ENV: &str = "SNAPSYNC_WIRE_COMPRESS";

/// The processors' counters at one time: idle and total ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ticks {
    idle: u64,
    total: u64,
}

struct Gauge {
    /// When the counters were last read, and what they were (`None`: not
    /// readable).
    last: Mutex<Option<(Instant, Option<Ticks>)>>,
    /// The verdict of the last interval.
    room: AtomicBool,
}

static GAUGE: Gauge = Gauge { last: Mutex::new(None), room: AtomicBool::new(true) };

static FIXED: std::sync::LazyLock<Option<bool>> =
    std::sync::LazyLock::new(|| match std::env::var(COMPRESS_ENV).as_deref() {
        Ok("always") => Some(true),
        Ok("never") => Some(false),
        _ => None,
    });

/// Whether this host's processors had room to spare lately, so that a
/// chunk sent to a peer is worth compressing. Cheap: it reads
/// `/proc/stat` at most every [`SAMPLE_EVERY`], and never waits for
/// another thread doing so.
pub fn room_to_compress() -> bool {
    if let Some(fixed) = *FIXED {
        return fixed;
    }
    if let Ok(mut last) = GAUGE.last.try_lock() {
        let now = Instant::now();
        if last.is_none_or(|(at, _)| now.duration_since(at) >= SAMPLE_EVERY) {
            let ticks = read_ticks();
            match (last.and_then(|(_, before)| before), ticks) {
                (Some(before), Some(after)) => GAUGE.room.store(has_room(before, after), Ordering::Relaxed),
                // Not readable: compress, and read again at the next interval.
                (_, None) => GAUGE.room.store(true, Ordering::Relaxed),
                // The first reading: the verdict comes with the next one.
                (None, Some(_)) => {}
            }
            *last = Some((now, ticks));
        }
    }
    GAUGE.room.load(Ordering::Relaxed)
}

/// Whether the idle share between two samples leaves room; an interval
/// with no ticks counted (too short) keeps room.
fn has_room(before: Ticks, after: Ticks) -> bool {
    let total = after.total.saturating_sub(before.total);
    let idle = after.idle.saturating_sub(before.idle);
    total == 0 || idle as f64 >= ROOM * total as f64
}

fn read_ticks() -> Option<Ticks> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_ticks(text.lines().next()?)
}

/// The all-processors line of `/proc/stat`: `cpu user nice system idle
/// iowait irq softirq steal ...` (guest time is counted in user time).
fn parse_ticks(line: &str) -> Option<Ticks> {
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let n: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if n.len() < 5 {
        return None;
    }
    Some(Ticks { idle: n[3] + n[4], total: n.iter().sum() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_all_processors_line() {
        let t = parse_ticks("cpu  4705 150 1120 16250 520 0 32 7 0 0").unwrap();
        assert_eq!(t, Ticks { idle: 16250 + 520, total: 4705 + 150 + 1120 + 16250 + 520 + 32 + 7 });
        // Older kernels print fewer fields.
        let t = parse_ticks("cpu 10 0 10 70 10").unwrap();
        assert_eq!(t, Ticks { idle: 80, total: 100 });
        assert_eq!(parse_ticks("cpu0 1 2 3 4 5 6 7 8"), None, "one processor's line");
        assert_eq!(parse_ticks("cpu 1 2 x 4 5"), None);
        assert_eq!(parse_ticks("cpu 1 2 3"), None);
    }

    #[test]
    fn room_is_an_idle_share_of_at_least_room() {
        let at = |idle, total| Ticks { idle, total };
        // Busy: 3 idle ticks of 200.
        assert!(!has_room(at(1000, 5000), at(1003, 5200)));
        // Idle: half of them.
        assert!(has_room(at(1000, 5000), at(1100, 5200)));
        // Exactly at the threshold.
        assert!(has_room(at(0, 0), at(15, 100)));
        assert!(!has_room(at(0, 0), at(14, 100)));
        // No ticks counted yet: keep room (as before any sample).
        assert!(has_room(at(10, 100), at(10, 100)));
    }

    #[test]
    fn this_host_is_sampled() {
        // Wherever /proc/stat exists its first line parses.
        if let Ok(text) = std::fs::read_to_string("/proc/stat") {
            assert!(parse_ticks(text.lines().next().unwrap()).is_some(), "{text}");
        }
    }
}
