//! The language of a request: stated by the client (`x-rosetta-language` header or
//! `metadata.language`), else detected from its text by `rosetta-langid` (85 languages; chosen
//! by measurement, see benchmarks/langdetect/). Text too short or too mixed to tell is `und`.

pub mod iso;

/// The code of an undetermined language.
pub const UND: &str = "und";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stated,
    Detected,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Language {
    /// ISO 639-1 where it exists, else ISO 639-3; `und` if undetermined.
    pub code: String,
    pub confidence: f64,
    pub source: Source,
}

impl Language {
    pub fn und() -> Self {
        Self {
            code: UND.to_string(),
            confidence: 0.0,
            source: Source::Detected,
        }
    }

    pub fn stated(code: String) -> Self {
        Self {
            code,
            confidence: 1.0,
            source: Source::Stated,
        }
    }

    pub fn is_und(&self) -> bool {
        self.code == UND
    }
}

/// Detects the language of `text`.
pub fn detect(text: &str) -> Language {
    match rosetta_langid::detect(text) {
        Some(d) => Language {
            code: d.code.to_string(),
            confidence: d.confidence,
            source: Source::Detected,
        },
        None => Language::und(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_scripts_and_languages() {
        for (text, code) in [
            (
                "The weather is lovely today and we are going to the market together.",
                "en",
            ),
            (
                "Aujourd'hui il fait beau et nous allons au marché ensemble.",
                "fr",
            ),
            ("Сегодня хорошая погода, и мы вместе идём на рынок.", "ru"),
            (
                "今日はとても良い天気なので、一緒に市場へ行きましょう。",
                "ja",
            ),
            ("आज मौसम बहुत अच्छा है और हम साथ में बाज़ार जा रहे हैं।", "hi"),
            ("ዛሬ የአየሩ ሁኔታ በጣም ጥሩ ነው እና አብረን ወደ ገበያ እንሄዳለን።", "am"),
            (
                "Hali ya hewa ni nzuri leo na tunakwenda sokoni pamoja.",
                "sw",
            ),
        ] {
            let l = detect(text);
            assert_eq!(l.code, code, "{text}: {l:?}");
            assert!(l.confidence > 0.5);
        }
    }

    #[test]
    fn too_short_or_too_mixed_is_und() {
        assert!(detect("ok").is_und());
        assert!(detect("12345 !!! ???").is_und());
        assert!(detect("").is_und());
        // One short phrase in each of four scripts: no language has the majority.
        assert!(detect("hello там 你好 مرحبا").is_und());
    }
}
