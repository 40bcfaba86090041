//! The writing system of a letter, by Unicode block.

/// Scripts the detector tells apart. Scripts written by one language we know answer at once;
/// the others are scored with character n-grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Script {
    Latin,
    Cyrillic,
    Arabic,
    Devanagari,
    Bengali,
    Gurmukhi,
    Gujarati,
    Oriya,
    Tamil,
    Telugu,
    Kannada,
    Malayalam,
    Sinhala,
    Thai,
    Lao,
    Tibetan,
    Myanmar,
    Georgian,
    Hangul,
    Ethiopic,
    Khmer,
    Greek,
    Armenian,
    Hebrew,
    Thaana,
    /// Hiragana and Katakana.
    Kana,
    Han,
}

impl Script {
    pub const COUNT: usize = 27;

    pub const ALL: [Script; Self::COUNT] = [
        Script::Latin,
        Script::Cyrillic,
        Script::Arabic,
        Script::Devanagari,
        Script::Bengali,
        Script::Gurmukhi,
        Script::Gujarati,
        Script::Oriya,
        Script::Tamil,
        Script::Telugu,
        Script::Kannada,
        Script::Malayalam,
        Script::Sinhala,
        Script::Thai,
        Script::Lao,
        Script::Tibetan,
        Script::Myanmar,
        Script::Georgian,
        Script::Hangul,
        Script::Ethiopic,
        Script::Khmer,
        Script::Greek,
        Script::Armenian,
        Script::Hebrew,
        Script::Thaana,
        Script::Kana,
        Script::Han,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The script's name as the profiles file writes it.
    pub fn from_name(name: &str) -> Option<Script> {
        Self::ALL.into_iter().find(|s| format!("{s:?}") == name)
    }

    /// The one language we know that is written in this script, if only one is.
    pub fn sole_language(self) -> Option<&'static str> {
        Some(match self {
            Script::Bengali => "bn",
            Script::Gurmukhi => "pa",
            Script::Gujarati => "gu",
            Script::Oriya => "or",
            Script::Tamil => "ta",
            Script::Telugu => "te",
            Script::Kannada => "kn",
            Script::Malayalam => "ml",
            Script::Sinhala => "si",
            Script::Thai => "th",
            Script::Lao => "lo",
            Script::Tibetan => "bo",
            Script::Myanmar => "my",
            Script::Georgian => "ka",
            Script::Hangul => "ko",
            Script::Ethiopic => "am",
            Script::Khmer => "km",
            Script::Greek => "el",
            Script::Armenian => "hy",
            Script::Hebrew => "he",
            Script::Thaana => "dv",
            Script::Kana => "ja",
            Script::Han => "zh",
            Script::Latin | Script::Cyrillic | Script::Arabic | Script::Devanagari => return None,
        })
    }

    /// The script of a letter; `None` for digits, punctuation, symbols and scripts we do not
    /// know.
    pub fn of(c: char) -> Option<Script> {
        let u = c as u32;
        if u < 0x80 {
            return c.is_ascii_alphabetic().then_some(Script::Latin);
        }
        Some(match u {
            // Latin-1, Extended-A/B and IPA (ɛ, ɔ, ŋ of West African orthographies).
            0x00C0..=0x02AF if c.is_alphabetic() => Script::Latin,
            0x1E00..=0x1EFF => Script::Latin,
            0x0370..=0x03FF | 0x1F00..=0x1FFF => Script::Greek,
            0x0400..=0x052F => Script::Cyrillic,
            0x0530..=0x058F => Script::Armenian,
            0x0590..=0x05FF => Script::Hebrew,
            0x0600..=0x06FF | 0x0750..=0x077F | 0xFB50..=0xFDFF | 0xFE70..=0xFEFF => Script::Arabic,
            0x0780..=0x07BF => Script::Thaana,
            0x0900..=0x097F => Script::Devanagari,
            0x0980..=0x09FF => Script::Bengali,
            0x0A00..=0x0A7F => Script::Gurmukhi,
            0x0A80..=0x0AFF => Script::Gujarati,
            0x0B00..=0x0B7F => Script::Oriya,
            0x0B80..=0x0BFF => Script::Tamil,
            0x0C00..=0x0C7F => Script::Telugu,
            0x0C80..=0x0CFF => Script::Kannada,
            0x0D00..=0x0D7F => Script::Malayalam,
            0x0D80..=0x0DFF => Script::Sinhala,
            0x0E00..=0x0E7F => Script::Thai,
            0x0E80..=0x0EFF => Script::Lao,
            0x0F00..=0x0FFF => Script::Tibetan,
            0x1000..=0x109F => Script::Myanmar,
            0x10A0..=0x10FF | 0x1C90..=0x1CBF => Script::Georgian,
            0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Script::Hangul,
            0x1200..=0x139F | 0x2D80..=0x2DDF => Script::Ethiopic,
            0x1780..=0x17FF => Script::Khmer,
            0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => Script::Kana,
            0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F => Script::Han,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Script::ALL {
            assert_eq!(Script::from_name(&format!("{s:?}")), Some(s));
            assert_eq!(Script::ALL[s.index()], s);
        }
    }

    #[test]
    fn letters_not_marks() {
        assert_eq!(Script::of('a'), Some(Script::Latin));
        assert_eq!(Script::of('é'), Some(Script::Latin));
        assert_eq!(Script::of('ọ'), Some(Script::Latin));
        assert_eq!(Script::of('ɔ'), Some(Script::Latin));
        assert_eq!(Script::of('×'), None);
        assert_eq!(Script::of('7'), None);
        assert_eq!(Script::of('ж'), Some(Script::Cyrillic));
        assert_eq!(Script::of('の'), Some(Script::Kana));
        assert_eq!(Script::of('语'), Some(Script::Han));
        assert_eq!(Script::of('한'), Some(Script::Hangul));
        assert_eq!(Script::of('ሰ'), Some(Script::Ethiopic));
    }
}
