//! Reads files as `/files` does and prints how fast: extraction alone, and cut into chunks by a
//! model's tokenizer.
//!
//!     cargo run --release -p ragway-files --example read -- MODEL_DIR ROUNDS FILE...
//!
//! One line per file: format, pages, chunks, and the median over ROUNDS of each step (ms and
//! pages/s, or KiB/s for formats without pages).

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use ragway_files::{extract, split, Limits, TokenCounter};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, rounds, files @ ..] = args.as_slice() else {
        anyhow::bail!("usage: read MODEL_DIR ROUNDS FILE...");
    };
    let rounds: usize = rounds.parse()?;
    let counter = TokenCounter::from_model_dir(Path::new(model))?;
    let limits = Limits { max_bytes: 256 << 20 };
    for file in files {
        let bytes = std::fs::read(file)?;
        let name = Path::new(file)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file");
        let (mut read_ms, mut cut_ms) = (Vec::new(), Vec::new());
        let mut last = None;
        for _ in 0..rounds {
            let started = Instant::now();
            let extracted = extract(name, &bytes, limits)?;
            read_ms.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            let pieces = split(&extracted, &counter, 200, 20);
            cut_ms.push(started.elapsed().as_secs_f64() * 1e3);
            last = Some((extracted, pieces.len()));
        }
        let Some((extracted, chunks)) = last else { continue };
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (read, cut) = (median(&mut read_ms), median(&mut cut_ms));
        let rate = |ms: f64| match extracted.pages {
            Some(pages) => format!("{:.0} pages/s", f64::from(pages) / ms * 1e3),
            None => format!("{:.0} KiB/s", bytes.len() as f64 / 1024.0 / ms * 1e3),
        };
        println!(
            "{name}: {} {} bytes, {} pages, {chunks} chunks | read {read:.1} ms ({}) | cut {cut:.1} ms | both {}",
            extracted.format.as_str(),
            bytes.len(),
            extracted.pages.map_or("-".into(), |p| p.to_string()),
            rate(read),
            rate(read + cut),
        );
    }
    Ok(())
}
