//! `/import` lines for scripts/scale.sh: `scale-lines BASE COUNT [SIGMA]` writes COUNT NDJSON lines
//! to stdout, line j being document `d<j>` with a generated text (24 words of a 5,000-word
//! vocabulary, Zipf-like, seeded by j) and the vector of base passage `j % B` plus Gaussian noise
//! of standard deviation SIGMA per value (default 0.02), renormalised. BASE holds B vectors as
//! little-endian f32s, each of the dimension in BASE's first 4 bytes (u32 LE): the real embedder's
//! vectors of the base passages, made once by the script. Fast enough to feed an import as it runs.

use std::io::{BufWriter, Read, Write};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.unit().max(f64::MIN_POSITIVE), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 3, "usage: scale-lines BASE COUNT [SIGMA]");
    let count: usize = args[2].parse()?;
    let sigma: f64 = args.get(3).map_or(Ok(0.02), |s| s.parse())?;
    let mut bytes = Vec::new();
    std::fs::File::open(&args[1])?.read_to_end(&mut bytes)?;
    let (head, rest) = bytes.split_at(4);
    let dimension = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let base: Vec<f32> = rest
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let passages = base.len() / dimension.max(1);
    anyhow::ensure!(passages > 0, "no base vectors in {}", args[1]);
    let cumulative: Vec<f64> = (0..5_000)
        .scan(0.0, |sum, rank| {
            *sum += 1.0 / (rank as f64 + 1.0);
            Some(*sum)
        })
        .collect();
    let total = cumulative[cumulative.len() - 1];
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut vector = vec![0f32; dimension];
    for j in 0..count {
        let mut rng = Rng(j as u64);
        let words: Vec<String> = (0..24)
            .map(|_| {
                let at = rng.unit() * total;
                format!("w{}", cumulative.partition_point(|c| *c < at))
            })
            .collect();
        let from = &base[(j % passages) * dimension..][..dimension];
        let mut norm = 0f64;
        for (v, b) in vector.iter_mut().zip(from) {
            *v = (f64::from(*b) + sigma * rng.gaussian()) as f32;
            norm += f64::from(*v) * f64::from(*v);
        }
        let scale = (1.0 / norm.sqrt()) as f32;
        vector.iter_mut().for_each(|v| *v *= scale);
        let line = serde_json::json!({"id": format!("d{j}"), "text": words.join(" "), "vector": vector});
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
