//! Incompressible bytes for tests and benchmarks (xorshift64: fast, reproducible, not secure).

/// A stream of pseudo-random bytes from a seed.
#[derive(Debug, Clone)]
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = &mut self.0;
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Noise::new(seed).fill(&mut v);
    v
}

/// Writes `len` pseudo-random bytes from `seed` to `path`, 1 MiB at a time.
pub fn write_random_file(path: &std::path::Path, len: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let (mut noise, mut buf, mut left) = (Noise::new(seed), vec![0u8; 1 << 20], len);
    while left > 0 {
        noise.fill(&mut buf);
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_seed_gives_the_same_bytes_and_others_differ() {
        assert_eq!(super::random_bytes(1000, 7), super::random_bytes(1000, 7));
        assert_ne!(super::random_bytes(1000, 7), super::random_bytes(1000, 8));
        let zeros = super::random_bytes(1 << 16, 1).iter().filter(|b| **b == 0).count();
        assert!(zeros < 1000, "{zeros} zero bytes in 64 KiB");
    }
}
