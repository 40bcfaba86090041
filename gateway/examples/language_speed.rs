//! Language detection latency by text length, through the gateway's own `language::detect`
//! (rosetta-langid and its `und` thresholds), on texts cut from the 34-language corpus in
//! engine/corpus/. Prints p50/p99 in microseconds per length.
//!
//!     cargo run --release -p rosetta-gateway --example language_speed

use std::time::Instant;

use rosetta_gateway::language;

fn main() -> anyhow::Result<()> {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/corpus");
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(&corpus)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "txt") {
            texts.push(std::fs::read_to_string(&path)?.replace('\n', " "));
        }
    }
    println!("| characters | p50 µs | p99 µs | und |");
    println!("|---|---|---|---|");
    for len in [20, 50, 100, 200, 500, 1000, 2000] {
        let samples: Vec<String> = texts
            .iter()
            .flat_map(|t| {
                let chars: Vec<char> = t.chars().collect();
                (0..8).map(move |k| {
                    let start = (k * 97) % chars.len().saturating_sub(len).max(1);
                    chars
                        .iter()
                        .cycle()
                        .skip(start)
                        .take(len)
                        .collect::<String>()
                })
            })
            .collect();
        let mut und = 0;
        let mut times = Vec::new();
        for round in 0..20 {
            for s in &samples {
                let t0 = Instant::now();
                let l = std::hint::black_box(language::detect(s));
                let dt = t0.elapsed().as_secs_f64() * 1e6;
                if round > 0 {
                    times.push(dt);
                    und += l.is_und() as usize;
                }
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {len} | {:.1} | {:.1} | {:.1}% |",
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            100.0 * und as f64 / times.len() as f64
        );
    }
    Ok(())
}
