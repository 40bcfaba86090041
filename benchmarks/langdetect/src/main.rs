//! Accuracy and speed of language detector crates on Rosetta's test set: the 34-language
//! corpus in engine/corpus/ cut into single sentences (short) and whole paragraphs (long).
//! Compares answers as ISO 639-3 codes (or the corpus's ISO 639-1 code, which rosetta-langid
//! answers in).
//!
//!     cargo run --release --manifest-path benchmarks/langdetect/Cargo.toml

use std::collections::BTreeMap;
use std::time::Instant;

/// Corpus file (ISO 639-1) → acceptable ISO 639-3 answers.
const TRUTH: &[(&str, &[&str])] = &[
    ("am", &["amh"]), ("ar", &["ara", "arb"]), ("bg", &["bul"]), ("bn", &["ben"]),
    ("de", &["deu"]), ("el", &["ell"]), ("en", &["eng"]), ("es", &["spa"]),
    ("fa", &["fas", "pes"]), ("fr", &["fra"]), ("ha", &["hau"]), ("he", &["heb"]),
    ("hi", &["hin"]), ("hy", &["hye"]), ("id", &["ind"]), ("it", &["ita"]),
    ("ja", &["jpn"]), ("ka", &["kat"]), ("ko", &["kor"]), ("mr", &["mar"]),
    ("ne", &["nep", "npi"]), ("nl", &["nld"]), ("pl", &["pol"]), ("pt", &["por"]),
    ("ru", &["rus"]), ("sw", &["swa", "swh"]), ("ta", &["tam"]), ("th", &["tha"]),
    ("tr", &["tur"]), ("uk", &["ukr"]), ("ur", &["urd"]), ("vi", &["vie"]),
    ("yo", &["yor"]), ("zh", &["zho", "cmn"]),
];

/// Sentences by their end marks; a paragraph without them (Thai separates sentences with
/// spaces) is cut at spaces into pieces of about 60 characters.
fn sentences(paragraph: &str) -> Vec<String> {
    let marked = marked_sentences(paragraph);
    if marked.len() > 1 {
        return marked;
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in paragraph.split_whitespace() {
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
        if cur.chars().count() >= 60 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if cur.chars().count() >= 15 {
        out.push(cur);
    }
    out
}

fn marked_sentences(paragraph: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in paragraph.chars() {
        cur.push(c);
        if matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '।' | '؟' | '።' | '۔') {
            let s = cur.trim().to_string();
            if s.chars().count() >= 15 {
                out.push(s);
            }
            cur.clear();
        }
    }
    out
}

struct Sample {
    lang: &'static str,
    text: String,
}

type Detector<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

fn main() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../engine/corpus");
    let mut short = Vec::new();
    let mut long = Vec::new();
    for (lang, _) in TRUTH {
        let text = std::fs::read_to_string(corpus.join(format!("{lang}.txt"))).expect("corpus");
        for p in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
            for s in sentences(p) {
                short.push(Sample { lang, text: s });
            }
            long.push(Sample { lang, text: p.to_string() });
        }
    }
    let per_lang = |v: &[Sample]| {
        let mut m: BTreeMap<&str, usize> = BTreeMap::new();
        for s in v {
            *m.entry(s.lang).or_default() += 1;
        }
        m
    };
    let (ps, pl) = (per_lang(&short), per_lang(&long));
    println!(
        "test set: {} sentences (min {} per language: {}), {} paragraphs, 34 languages, 15 scripts",
        short.len(),
        ps.values().min().unwrap(),
        ps.iter().min_by_key(|x| x.1).unwrap().0,
        long.len()
    );
    let _ = pl;
    // 200-character texts for the speed figure.
    let speed_texts: Vec<String> = long
        .iter()
        .map(|s| s.text.chars().take(200).collect())
        .collect();

    let lingua_high = lingua::LanguageDetectorBuilder::from_all_languages()
        .with_preloaded_language_models()
        .build();
    let lingua_low = lingua::LanguageDetectorBuilder::from_all_languages()
        .with_low_accuracy_mode()
        .with_preloaded_language_models()
        .build();
    let detectors: Vec<(&str, usize, Detector)> = vec![
        (
            "rosetta-langid (lingua's models, own index)",
            rosetta_langid::languages().len(),
            Box::new(|t: &str| rosetta_langid::detect(t).map(|d| d.code.to_string())),
        ),
        (
            "whatlang 0.16",
            whatlang::Lang::all().len(),
            Box::new(|t: &str| whatlang::detect(t).map(|i| i.lang().code().to_string())),
        ),
        (
            "whatlang 0.16, trigrams only",
            whatlang::Lang::all().len(),
            Box::new(|t: &str| {
                let opts = whatlang::dev::Options::new().set_method(whatlang::dev::Method::Trigram);
                whatlang::dev::detect_with_options(t, &opts).map(|i| i.lang().code().to_string())
            }),
        ),
        (
            "whichlang 0.1",
            whichlang::LANGUAGES.len(),
            Box::new(|t: &str| Some(whichlang::detect_language(t).three_letter_code().to_string())),
        ),
        (
            "lingua 1.8 (low accuracy)",
            lingua::Language::all().len(),
            Box::new(|t: &str| lingua_low.detect_language_of(t).map(|l| l.iso_code_639_3().to_string())),
        ),
        (
            "lingua 1.8 (high accuracy)",
            lingua::Language::all().len(),
            Box::new(|t: &str| lingua_high.detect_language_of(t).map(|l| l.iso_code_639_3().to_string())),
        ),
    ];
    let truth: BTreeMap<&str, &[&str]> = TRUTH.iter().copied().collect();
    let mut table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    println!("\n| detector | languages | short acc. | long acc. | p50 µs (200 chars) | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for (name, langs, detect) in &detectors {
        let acc = |set: &[Sample], table: &mut Option<&mut BTreeMap<&str, Vec<String>>>| {
            let mut ok_by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for s in set {
                let got = detect(&s.text);
                let ok = got.as_deref().is_some_and(|g| g == s.lang || truth[s.lang].contains(&g));
                let e = ok_by.entry(s.lang).or_default();
                e.0 += ok as usize;
                e.1 += 1;
            }
            if let Some(t) = table {
                for (l, (ok, n)) in &ok_by {
                    t.entry(l).or_default().push(format!("{:.0}%", 100.0 * *ok as f64 / *n as f64));
                }
            }
            let (ok, n) = ok_by.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            100.0 * ok as f64 / n as f64
        };
        let short_acc = acc(&short, &mut Some(&mut table));
        let long_acc = acc(&long, &mut None);
        for t in speed_texts.iter().take(50) {
            std::hint::black_box(detect(t));
        }
        let mut times = Vec::new();
        for _ in 0..5 {
            for t in &speed_texts {
                let t0 = Instant::now();
                std::hint::black_box(detect(t));
                times.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {name} | {langs} | {short_acc:.1}% | {long_acc:.1}% | {:.1} | {:.1} |",
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
    }
    println!("\nshort-sentence accuracy per language:\n");
    println!("| lang | {} |", detectors.iter().map(|d| d.0).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---|".repeat(detectors.len()));
    for (l, cells) in &table {
        println!("| {l} | {} |", cells.join(" | "));
    }
}
