//! The floors the machine sets: what no sync of a tree can beat.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::sys::{self, Fresh};
use crate::{TreeSpec, generate, median, repeats, syncfs};

/// On a fresh filesystem holding `spec`'s tree (warm page cache, as the
/// tools see it right after it is written): a parallel `lstat` of every
/// file, reading and hashing every byte (BLAKE3, on all CPUs), and `cp -a`
/// of the tree to two directories at once.
pub fn tree_floors(base: &Path, spec: &TreeSpec, allow_loop: bool) -> Value {
    let fresh = Fresh::new(base, &format!("floors-{}", spec.name), spec.shape.max_bytes() * 4 + (1 << 30), allow_loop);
    let src = fresh.path.join("src");
    let tree = generate(&src, &spec.shape);
    syncfs(&src);
    let paths: Vec<_> = tree.files.iter().map(|p| src.join(p)).collect();

    let mut lstat = Vec::new();
    for _ in 0..repeats() {
        let t = Instant::now();
        let n: u64 = paths.par_iter().map(|p| std::fs::symlink_metadata(p).map_or(0, |m| m.len())).sum();
        lstat.push(t.elapsed());
        assert_eq!(n, tree.bytes, "lstat saw other sizes than were written");
    }
    let t = Instant::now();
    let hashed: u64 = paths
        .par_iter()
        .map(|p| {
            let mut f = std::fs::File::open(p).unwrap();
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
            }
            std::hint::black_box(h.finalize());
            n
        })
        .sum();
    let hash = t.elapsed();
    let mut c1 = Command::new("cp");
    c1.arg("-a").arg(&src).arg(fresh.path.join("copy1"));
    let mut c2 = Command::new("cp");
    c2.arg("-a").arg(&src).arg(fresh.path.join("copy2"));
    let copy =
        sys::run_all(vec![&mut c1, &mut c2], &[0]).map(|e| e.iter().map(|e| e.elapsed).max().unwrap_or_default());
    let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let v = json!({
        "filesystem": fresh.kind,
        "tree_bytes": tree.bytes,
        "lstat_s": s(median(&lstat)),
        "lstat_runs_s": lstat.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        "read_hash_s": hash.as_secs_f64(),
        "read_hash_bytes": hashed,
        "copy_two_s": copy.as_ref().ok().map(|d| d.as_secs_f64()),
        "copy_error": copy.as_ref().err(),
    });
    println!("  {v}");
    v
}

/// Bytes per second through one QUIC stream on loopback between two of
/// snapsync's own endpoints (TLS 1.3, the same limits as a sync).
pub fn quic(base: &Path, bytes: u64) -> Value {
    match quic_run(base, bytes) {
        Ok((d, n)) => json!({
            "bytes": n,
            "s": d.as_secs_f64(),
            "bytes_per_s": n as f64 / d.as_secs_f64(),
        }),
        Err(e) => json!({ "error": e }),
    }
}

fn quic_run(base: &Path, bytes: u64) -> Result<(Duration, u64), String> {
    let dir = tempfile::tempdir_in(base).map_err(|e| e.to_string())?;
    let key = snapsync::key::generate().map_err(|e| e.to_string())?.into_bytes();
    let ident = |host: &str| {
        let state = dir.path().join(host);
        std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
        snapsync::net::NodeIdentity::load_or_create(&state, host, &key).map_err(|e| e.to_string())
    };
    let (server_id, client_id) = (ident("qa")?, ident("qb")?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let addr: SocketAddr = (Ipv4Addr::new(127, 0, 0, 71), 0).into();
        let mut server = snapsync::net::Server::bind(addr, &server_id).map_err(|e| e.to_string())?;
        let addr = server.local_addr();
        let receiver = tokio::spawn(async move {
            let mut conn = server.accept().await.map_err(|e| e.to_string())?;
            let mut stream = conn.accept_stream().await.map_err(|e| e.to_string())?.ok_or("no stream")?;
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            stream.write_all(&n.to_le_bytes()).await.map_err(|e| e.to_string())?;
            stream.shutdown().await.map_err(|e| e.to_string())?;
            // Kept open until the sender has read the count.
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(conn);
            Ok::<u64, String>(n)
        });
        let mut conn = snapsync::net::connect(addr, "qa", &client_id).await.map_err(|e| e.to_string())?;
        let mut stream = conn.open_stream().await.map_err(|e| e.to_string())?;
        let block = vec![0x5au8; 1 << 20];
        let t = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            stream.write_all(&block[..k]).await.map_err(|e| e.to_string())?;
            left -= k as u64;
        }
        stream.shutdown().await.map_err(|e| e.to_string())?;
        let mut count = [0u8; 8];
        stream.read_exact(&mut count).await.map_err(|e| e.to_string())?;
        let elapsed = t.elapsed();
        let got = u64::from_le_bytes(count);
        receiver.await.map_err(|e| e.to_string())??;
        if got != bytes {
            return Err(format!("the receiver counted {got} bytes of {bytes}"));
        }
        Ok((elapsed, got))
    })
}
