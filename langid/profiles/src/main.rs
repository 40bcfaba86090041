//! Writes the trigram profiles of Rosetta's language detector from lingua's n-gram models.
//!
//!     cargo run --release --manifest-path langid/profiles/Cargo.toml -- [--top 4000] [--out langid/data/ngrams.bin]
//!
//! lingua stores, per language, ln P(c | ab) for every trigram `abc` seen in its training
//! words, and likewise ln P(b | a) and ln P(a). A profile keeps every unigram and bigram and
//! the `--top` trigrams by joint probability ln P(a) + ln P(b | a) + ln P(c | ab), so the
//! common contexts are covered, each with the cost (minus the log probability) the detector
//! sums. Format: see `langid/src/profiles.rs`.

mod models;

use std::collections::HashMap;
use std::io::Write;

/// Costs are stored in steps of 1/8 nat, in one byte.
const COST_SCALE: f64 = 8.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut top = 4000usize;
    let mut out = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/ngrams.bin"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--top" => top = args.next().ok_or("--top needs a number")?.parse()?,
            "--out" => out = args.next().ok_or("--out needs a path")?.into(),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let mut file = Vec::new();
    file.extend_from_slice(b"RLID\x01");
    file.extend_from_slice(&u16::try_from(models::MODELS.len())?.to_le_bytes());
    for (code, script, dir) in models::MODELS {
        let fst_bytes = dir.get_file("ngrams.fst").ok_or("ngrams.fst missing")?.contents();
        let map = fst::Map::new(fst_bytes.to_vec())?;
        let mut by_order: [HashMap<String, f64>; 3] = Default::default();
        let mut stream = map.stream();
        use fst::Streamer;
        while let Some((key, value)) = stream.next() {
            let gram = std::str::from_utf8(key)?;
            let n = gram.chars().count();
            if (1..=3).contains(&n) {
                by_order[n - 1].insert(gram.to_string(), f64::from_bits(value));
            }
        }
        let mut ranked: Vec<(f64, &str, f64)> = by_order[2]
            .iter()
            .filter_map(|(tri, &cond)| {
                let mut chars = tri.char_indices();
                let b = chars.nth(1)?.0;
                let c = chars.next()?.0;
                let joint = by_order[0].get(&tri[..b])? + by_order[1].get(&tri[..c])? + cond;
                Some((joint, tri.as_str(), cond))
            })
            .collect();
        ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(y.1)));
        ranked.truncate(top);
        // Every unigram and bigram too: they score a word's first two letters.
        for order in &by_order[..2] {
            ranked.extend(order.iter().map(|(g, &cond)| (cond, g.as_str(), cond)));
        }
        // Stored in key order so the file is stable across runs.
        ranked.sort_by(|x, y| x.1.cmp(y.1));

        file.push(u8::try_from(code.len())?);
        file.extend_from_slice(code.as_bytes());
        file.push(u8::try_from(script.len())?);
        file.extend_from_slice(script.as_bytes());
        file.extend_from_slice(&u32::try_from(ranked.len())?.to_le_bytes());
        for (_, tri, cond) in &ranked {
            file.push(u8::try_from(tri.len())?);
            file.extend_from_slice(tri.as_bytes());
            file.push((-cond * COST_SCALE).round().clamp(0.0, 255.0) as u8);
        }
        eprintln!("{code} {script}: {} n-grams ({} trigrams of {})", ranked.len(), top.min(by_order[2].len()), by_order[2].len());
    }
    std::fs::File::create(&out)?.write_all(&file)?;
    eprintln!("wrote {} ({} bytes)", out.display(), file.len());
    Ok(())
}
