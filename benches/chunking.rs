//! Chunking and chunk encoding throughput, one thread.
//!
//! - `chunk_bytes`: FastCDC cutting plus BLAKE3 naming of 64 MiB of seeded
//!   pseudo-random data (the SPEC's "chunking plus hashing at least
//!   1 GiB/s per core"), with its two halves measured alone (`cut_only`,
//!   `hash_only`) to show which one bounds it.
//! - `chunk_reader`, `chunk_file_*`: the same through the streaming window
//!   and from a (page-cached) file.
//! - `encode_*` / `decode_*`: the stored form of 64 KiB chunks, on text-like
//!   data that compresses and on random data that does not; `zstd_level_*`
//!   compares compression levels.
//!
//! `cargo bench --bench chunking` prints divan's table, then measures the
//! headline figures once more and writes them to
//! `target/bench-results/chunking.txt` for comparison across runs.

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{Seek, Write as _};
use std::time::Instant;

use divan::Bencher;
use divan::counter::BytesCount;
use snapsync::chunk::{self, AVG_SIZE, MAX_SIZE, MIN_SIZE};
use snapsync::hash::Hash;

/// Size of the chunking input: large enough that caches do not flatter it.
const CHUNKING_INPUT: usize = 64 << 20;

/// Size of the encoding input, cut into 64 KiB chunks.
const ENCODING_INPUT: usize = 16 << 20;
const ENCODING_CHUNK: usize = 64 << 10;

fn main() {
    divan::main();
    // `cargo bench` passes --bench; `cargo test` runs each benchmark once
    // without it, and then there is nothing worth recording.
    if std::env::args().any(|a| a == "--bench") {
        write_summary();
    }
}

/// Seeded pseudo-random bytes (xorshift64*): incompressible, and the same
/// on every run.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Seeded text resembling stylesheets and scripts: compresses about as
/// web assets do.
fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "margin",
        "padding",
        "color",
        "background",
        "font-size",
        "display",
        "flex",
        "none",
        "block",
        "function",
        "return",
        "const",
        "let",
        "this",
        "width",
        "height",
        "0px",
        "1em",
        "#ffffff",
        "auto",
        "center",
        "position",
        "absolute",
        "relative",
        "border",
        "solid",
        "transition",
        "opacity",
        "window",
        "document",
        "querySelector",
        "addEventListener",
    ];
    let noise = random_bytes(seed, len / 2 + 16);
    let mut out = String::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        let pick = |k: usize| WORDS[noise[(i + k) % noise.len()] as usize % WORDS.len()];
        let value = noise[(i + 3) % noise.len()];
        writeln!(out, ".{}-{} {{ {}: {}{}; }}", pick(0), value, pick(1), pick(2), value % 17).unwrap();
        i += 4;
    }
    out.truncate(len);
    out.into_bytes()
}

#[divan::bench]
fn chunk_bytes(bencher: Bencher) {
    let data = random_bytes(0xbe9c, CHUNKING_INPUT);
    bencher.counter(BytesCount::of_slice(&data)).bench(|| chunk::chunk_bytes(black_box(&data)));
}

/// FastCDC cut points alone, as `chunk_bytes` finds them.
#[divan::bench]
fn cut_only(bencher: Bencher) {
    let data = random_bytes(0xbe9c, CHUNKING_INPUT);
    bencher.counter(BytesCount::of_slice(&data)).bench(|| {
        fastcdc::v2020::FastCDC::new(black_box(&data), MIN_SIZE as usize, AVG_SIZE as usize, MAX_SIZE as usize).count()
    });
}

/// BLAKE3 alone over average-sized chunks.
#[divan::bench]
fn hash_only(bencher: Bencher) {
    let data = random_bytes(0xbe9c, CHUNKING_INPUT);
    bencher
        .counter(BytesCount::of_slice(&data))
        .bench(|| black_box(&data).chunks(AVG_SIZE as usize).map(Hash::of).fold(0u8, |acc, h| acc ^ h.0[0]));
}

#[divan::bench]
fn chunk_reader(bencher: Bencher) {
    let data = random_bytes(0xbe9c, CHUNKING_INPUT);
    bencher
        .counter(BytesCount::of_slice(&data))
        .bench(|| chunk::chunk_reader(black_box(&data[..]), |_, _| Ok(())).unwrap());
}

/// `chunk_file` on a page-cached file of each size: read whole below
/// `STREAM_WINDOW` (1 MiB), streamed above.
#[divan::bench(args = [64 << 10, 1 << 20, 8 << 20, 64 << 20])]
fn chunk_file(bencher: Bencher, size: usize) {
    let data = random_bytes(0xf11e, size);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&data).unwrap();
    bencher.counter(BytesCount::of_slice(&data)).bench_local(|| {
        file.rewind().unwrap();
        chunk::chunk_file(&mut file, size as u64, |_, _| Ok(())).unwrap()
    });
}

/// Seeded 64 KiB chunks of the given kind.
fn encoding_input(kind: &str) -> Vec<u8> {
    match kind {
        "text" => text_bytes(0xe4c, ENCODING_INPUT),
        _ => random_bytes(0xe4c, ENCODING_INPUT),
    }
}

#[divan::bench(args = ["text", "random"])]
fn encode(bencher: Bencher, kind: &str) {
    let data = encoding_input(kind);
    let mut out = Vec::new();
    bencher.counter(BytesCount::of_slice(&data)).bench_local(|| {
        for piece in black_box(&data).chunks(ENCODING_CHUNK) {
            chunk::encode_into(piece, &mut out);
        }
    });
}

#[divan::bench(args = ["text", "random"])]
fn decode(bencher: Bencher, kind: &str) {
    let data = encoding_input(kind);
    let stored: Vec<(Hash, Vec<u8>)> =
        data.chunks(ENCODING_CHUNK).map(|piece| (Hash::of(piece), chunk::encode(piece))).collect();
    let mut out = Vec::new();
    bencher.counter(BytesCount::of_slice(&data)).bench_local(|| {
        for (hash, form) in black_box(&stored) {
            chunk::decode_into(hash, form, &mut out).unwrap();
        }
    });
}

/// zstd alone at each candidate level on text-like 64 KiB chunks; the
/// compressed size is printed once so speed can be weighed against it.
#[divan::bench(args = [1, 2, 3])]
fn zstd_level(bencher: Bencher, level: i32) {
    let data = encoding_input("text");
    let mut compressor = zstd::bulk::Compressor::new(level).unwrap();
    let mut out = Vec::with_capacity(zstd::compress_bound(ENCODING_CHUNK));
    bencher.counter(BytesCount::of_slice(&data)).bench_local(|| {
        let mut total = 0;
        for piece in black_box(&data).chunks(ENCODING_CHUNK) {
            total += compressor.compress_to_buffer(piece, &mut out).unwrap();
        }
        total
    });
}

/// Best of `runs` timings of `f` over `bytes` bytes, in MiB/s.
fn mib_per_s(bytes: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    let best = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    bytes as f64 / best / (1024.0 * 1024.0)
}

/// Writes the headline figures to `target/bench-results/chunking.txt`.
fn write_summary() {
    let mut report = String::new();
    let data = random_bytes(0xbe9c, CHUNKING_INPUT);
    let list = chunk::chunk_bytes(&data);
    let speed = mib_per_s(data.len(), 5, || {
        black_box(chunk::chunk_bytes(black_box(&data)));
    });
    writeln!(report, "chunk_bytes_random_mib_s {speed:.0}").unwrap();
    writeln!(report, "mean_chunk_bytes_random {}", data.len() / list.len()).unwrap();

    let mut out = Vec::new();
    for kind in ["text", "random"] {
        let data = encoding_input(kind);
        let stored: usize = data.chunks(ENCODING_CHUNK).map(|p| chunk::encode(p).len()).sum();
        let speed = mib_per_s(data.len(), 5, || {
            for piece in data.chunks(ENCODING_CHUNK) {
                chunk::encode_into(piece, &mut out);
            }
        });
        writeln!(report, "encode_{kind}_mib_s {speed:.0}").unwrap();
        writeln!(report, "encode_{kind}_ratio {:.3}", stored as f64 / data.len() as f64).unwrap();
    }
    for level in [1, 3] {
        let data = encoding_input("text");
        let size: usize = data.chunks(ENCODING_CHUNK).map(|p| zstd::bulk::compress(p, level).unwrap().len()).sum();
        writeln!(report, "zstd_level{level}_text_ratio {:.3}", size as f64 / data.len() as f64).unwrap();
    }

    print!("\n{report}");
    // The bench binary sits in target/<profile>/deps/.
    let Some(target) =
        std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
    else {
        return;
    };
    let dir = target.join("bench-results");
    let path = dir.join("chunking.txt");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &report)) {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
