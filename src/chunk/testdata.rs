//! Seeded test data for the chunking tests.
//!
//! The generator is written out here (xorshift64*, Vigna 2016) rather than
//! taken from a crate, so that the bytes behind the pinned chunk boundaries
//! can never change with a dependency.

/// `len` pseudo-random bytes determined by `seed` alone.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1; // xorshift must not start at zero
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

/// Data that mixes random stretches with runs of one byte value, so that
/// chunking meets both content-defined cuts and forced cuts at `MAX_SIZE`.
pub fn mixed_bytes(seed: u64, len: usize) -> Vec<u8> {
    let noise = random_bytes(seed, len);
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len {
        // Piece length from the noise itself: up to 512 KiB, then random
        // bytes or a run of a single value.
        let word =
            u32::from_le_bytes([noise[i % len], noise[(i + 1) % len], noise[(i + 2) % len], noise[(i + 3) % len]]);
        let piece = ((word as usize) % (512 * 1024) + 1).min(len - out.len());
        if word & 0x8000_0000 == 0 {
            out.extend_from_slice(&noise[out.len()..out.len() + piece]);
        } else {
            out.resize(out.len() + piece, (word >> 8) as u8);
        }
        i += 4;
    }
    out
}
