//! Rosetta's language detector.
//!
//! Two steps, both over one pass of the text's characters:
//! 1. The script of the letters. A script that only one language we know is written in
//!    (Hangul, Ethiopic, Thai, Greek, Tamil, …) answers at once; Han with a tenth or more of
//!    Kana is Japanese, Han alone Chinese.
//! 2. Latin, Cyrillic, Arabic and Devanagari text is scored against per-language character
//!    models: the sum over each word's letters of -ln P(letter | the two before it) (the
//!    first two letters by the unigram and bigram), an n-gram a profile lacks costing
//!    [`UNSEEN_COST`]; the cheapest language wins. The models are lingua's (Apache-2.0): all
//!    unigrams and bigrams and each language's 4,000 most frequent trigrams, written by
//!    `langid/profiles`.
//!
//! Why not a detector crate as is: of those measured (benchmarks/langdetect), whatlang has no
//! Swahili, Yoruba or Hausa and takes ~27 µs for 200 characters; lingua knows Swahili and
//! Yoruba but takes 360 µs or more. Scoring lingua's models through an inverted index answers
//! in a few microseconds.

mod profiles;
mod script;

pub use script::Script;

use profiles::{pack, PROFILES};

/// Below this many letters a guess is noise.
pub const MIN_LETTERS: usize = 8;
/// Detection reads this many characters at most: more rarely changes the answer, and a long
/// document would otherwise cost a millisecond or more.
pub const MAX_CHARS: usize = 1024;
/// Below this confidence the text is too mixed or too short to tell.
pub const MIN_CONFIDENCE: f64 = 0.5;
/// The cost of an n-gram a language's profile lacks, in 1/8 nat (12 nats, rarer than
/// nearly every n-gram the profiles keep).
const UNSEEN_COST: i32 = 96;
/// Costs are stored in 1/8 nat.
const COST_SCALE: f64 = 8.0;

/// A detected language.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// ISO 639-1 code.
    pub code: &'static str,
    /// 0 to 1: the dominant script's share of the letters times the language's posterior
    /// probability among those written in that script.
    pub confidence: f64,
}

/// Loads the profiles now rather than on the first request.
pub fn warm_up() {
    let _ = PROFILES.languages.len();
}

/// Every language `detect` can answer, as ISO 639-1 codes, sorted.
pub fn languages() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = PROFILES.languages.clone();
    out.extend(Script::ALL.into_iter().filter_map(Script::sole_language));
    out.sort_unstable();
    out.dedup();
    out
}

/// The language of `text`, or `None` when it is too short or too mixed to tell. Only the
/// first [`MAX_CHARS`] characters are read.
pub fn detect(text: &str) -> Option<Detection> {
    let text = text
        .char_indices()
        .nth(MAX_CHARS)
        .map_or(text, |(end, _)| &text[..end]);
    let mut counts = [0u32; Script::COUNT];
    let mut letters = 0u32;
    for c in text.chars() {
        if let Some(s) = letter_script(c) {
            counts[s.index()] += 1;
            letters += 1;
        }
    }
    if (letters as usize) < MIN_LETTERS {
        return None;
    }
    let (script, count) = dominant(&counts);
    let share = count as f64 / letters as f64;
    if let Some(code) = script.sole_language() {
        return confident(code, share);
    }
    let (code, posterior) = score_ngrams(text, script)?;
    confident(code, share * posterior)
}

fn confident(code: &'static str, confidence: f64) -> Option<Detection> {
    (confidence >= MIN_CONFIDENCE).then_some(Detection { code, confidence })
}

/// The script with most letters; Japanese mixes Han and Kana, so the two count together and
/// go to Kana (Japanese) when Kana is a tenth or more of them.
fn dominant(counts: &[u32; Script::COUNT]) -> (Script, u32) {
    let kana = counts[Script::Kana.index()];
    let han = counts[Script::Han.index()];
    let mut best = (Script::Latin, 0);
    for s in Script::ALL {
        let n = match s {
            Script::Kana | Script::Han => continue,
            _ => counts[s.index()],
        };
        if n > best.1 {
            best = (s, n);
        }
    }
    if kana + han > best.1 {
        let cjk = if kana * 10 >= kana + han {
            Script::Kana
        } else {
            Script::Han
        };
        best = (cjk, kana + han);
    }
    best
}

/// The script of a letter; combining marks (vowel signs, harakat, accents) are not letters
/// here, as they were not in the models' words.
fn letter_script(c: char) -> Option<Script> {
    if c.is_ascii() {
        return c.is_ascii_alphabetic().then_some(Script::Latin);
    }
    if !c.is_alphabetic() || is_combining_mark(c) {
        return None;
    }
    Script::of(c)
}

fn is_combining_mark(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05C7 | 0x0610..=0x061A
        | 0x064B..=0x065F | 0x0670 | 0x06D6..=0x06ED | 0x0900..=0x0903 | 0x093A..=0x093C
        | 0x093E..=0x094F | 0x0951..=0x0957 | 0x0962..=0x0963)
}

fn lowercase(c: char) -> char {
    if c.is_ascii() {
        c.to_ascii_lowercase()
    } else {
        c.to_lowercase().next().unwrap_or(c)
    }
}

/// The cheapest language written in `script` for the letters of `text`'s words, each scored
/// given the one or two before it, with its posterior probability among them.
fn score_ngrams(text: &str, script: Script) -> Option<(&'static str, f64)> {
    let profiles = &*PROFILES;
    let candidates = &profiles.by_script[script.index()];
    // Per language: the sum over seen n-grams of (cost - UNSEEN_COST). The common term
    // `ngrams * UNSEEN_COST` is left out: only differences between languages matter.
    let mut delta = [0i32; 256];
    let mut ngrams = 0u32;
    let (mut a, mut b) = (None, None);
    for c in text.chars() {
        if letter_script(c) != Some(script) {
            (a, b) = (None, None);
            continue;
        }
        let c = lowercase(c);
        // A word's first letter is scored by the unigram, its second by the bigram.
        let key = pack(a.into_iter().chain(b).chain([c]));
        ngrams += 1;
        for p in profiles.lookup(key) {
            delta[p.language as usize] += i32::from(p.cost) - UNSEEN_COST;
        }
        (a, b) = (b, Some(c));
    }
    if ngrams == 0 {
        return None;
    }
    let best = *candidates.iter().min_by_key(|&&l| delta[l as usize])?;
    let best_delta = delta[best as usize];
    let total: f64 = candidates
        .iter()
        .map(|&l| (-(f64::from(delta[l as usize] - best_delta)) / COST_SCALE).exp())
        .sum();
    Some((profiles.languages[best as usize], 1.0 / total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Option<&'static str> {
        detect(text).map(|d| d.code)
    }

    #[test]
    fn knows_sixty_languages_and_more() {
        let langs = languages();
        assert!(langs.len() >= 80, "{langs:?}");
        for l in [
            "sw", "yo", "zu", "am", "hi", "ja", "zh", "ko", "en", "ru", "ar",
        ] {
            assert!(langs.contains(&l), "{l}");
        }
    }

    #[test]
    fn detects_by_script_and_by_ngrams() {
        for (text, want) in [
            (
                "The weather is lovely today and we are going to the market together.",
                "en",
            ),
            (
                "Aujourd'hui il fait beau et nous allons au marché ensemble.",
                "fr",
            ),
            (
                "Hali ya hewa ni nzuri leo na tunakwenda sokoni pamoja.",
                "sw",
            ),
            ("Ojú ọjọ́ dára lónìí, a sì ń lọ sí ọjà papọ̀.", "yo"),
            ("Сегодня хорошая погода, и мы вместе идём на рынок.", "ru"),
            ("Сьогодні чудова погода, і ми разом йдемо на ринок.", "uk"),
            (
                "今日はとても良い天気なので、一緒に市場へ行きましょう。",
                "ja",
            ),
            ("今天天气很好，我们一起去市场吧。", "zh"),
            ("오늘은 날씨가 정말 좋아서 함께 시장에 갑니다.", "ko"),
            ("आज मौसम बहुत अच्छा है और हम साथ में बाज़ार जा रहे हैं।", "hi"),
            ("ዛሬ የአየሩ ሁኔታ በጣም ጥሩ ነው እና አብረን ወደ ገበያ እንሄዳለን።", "am"),
            ("امروز هوا خیلی خوب است و ما با هم به بازار می‌رویم.", "fa"),
        ] {
            let d = detect(text);
            assert_eq!(d.map(|d| d.code), Some(want), "{text}: {d:?}");
            assert!(d.is_some_and(|d| d.confidence >= MIN_CONFIDENCE));
        }
    }

    #[test]
    fn too_short_or_too_mixed_is_undetermined() {
        assert_eq!(code("ok"), None);
        assert_eq!(code("12345 !!! ???"), None);
        assert_eq!(code(""), None);
        // One short phrase in each of four scripts: none has the majority.
        assert_eq!(code("hello там 你好 مرحبا"), None);
    }

    proptest::proptest! {
        /// Any text, in any script or none: an answer, never a panic, and a confidence
        /// that is a probability.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            if let Some(d) = detect(&text) {
                proptest::prop_assert!((0.0..=1.0).contains(&d.confidence));
            }
        }

        #[test]
        fn arbitrary_chars_never_panic(chars in proptest::collection::vec(proptest::char::any(), 0..2000)) {
            let text: String = chars.into_iter().collect();
            let _ = detect(&text);
        }
    }
}
