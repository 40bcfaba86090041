//! ISO 639 codes: detectors answer in ISO 639-3; configs and headers use the two-letter
//! ISO 639-1 code where one exists.

/// ISO 639-3 → ISO 639-1 for every language the detector knows.
const TO_639_1: &[(&str, &str)] = &[
    ("afr", "af"),
    ("aka", "ak"),
    ("amh", "am"),
    ("ara", "ar"),
    ("aze", "az"),
    ("bel", "be"),
    ("ben", "bn"),
    ("bul", "bg"),
    ("cat", "ca"),
    ("ces", "cs"),
    ("cmn", "zh"),
    ("dan", "da"),
    ("deu", "de"),
    ("ell", "el"),
    ("eng", "en"),
    ("epo", "eo"),
    ("est", "et"),
    ("fin", "fi"),
    ("fra", "fr"),
    ("guj", "gu"),
    ("heb", "he"),
    ("hin", "hi"),
    ("hrv", "hr"),
    ("hun", "hu"),
    ("hye", "hy"),
    ("ind", "id"),
    ("ita", "it"),
    ("jav", "jv"),
    ("jpn", "ja"),
    ("kan", "kn"),
    ("kat", "ka"),
    ("khm", "km"),
    ("kor", "ko"),
    ("lat", "la"),
    ("lav", "lv"),
    ("lit", "lt"),
    ("mal", "ml"),
    ("mar", "mr"),
    ("mkd", "mk"),
    ("mya", "my"),
    ("nep", "ne"),
    ("nld", "nl"),
    ("nob", "nb"),
    ("ori", "or"),
    ("pan", "pa"),
    ("pes", "fa"),
    ("pol", "pl"),
    ("por", "pt"),
    ("ron", "ro"),
    ("rus", "ru"),
    ("sin", "si"),
    ("slk", "sk"),
    ("slv", "sl"),
    ("sna", "sn"),
    ("spa", "es"),
    ("srp", "sr"),
    ("swe", "sv"),
    ("tam", "ta"),
    ("tel", "te"),
    ("tgl", "tl"),
    ("tha", "th"),
    ("tuk", "tk"),
    ("tur", "tr"),
    ("ukr", "uk"),
    ("urd", "ur"),
    ("uzb", "uz"),
    ("vie", "vi"),
    ("yid", "yi"),
    ("zul", "zu"),
];

/// The two-letter code of a three-letter one, or the three-letter code itself.
pub fn normalize_639_3(code: &str) -> String {
    TO_639_1
        .iter()
        .find(|(three, _)| *three == code)
        .map(|(_, two)| two.to_string())
        .unwrap_or_else(|| code.to_string())
}

/// A client-stated language (`sw`, `swa`, `pt-BR`, `zh_Hant`) as the code routes use: the
/// primary subtag, lower case, two letters where ISO 639-1 has them. `None` if malformed.
pub fn parse_stated(tag: &str) -> Option<String> {
    let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
    rosetta_config::is_language_code(&primary).then(|| normalize_639_3(&primary))
}

/// How many languages detection can name.
pub fn detectable_languages() -> usize {
    TO_639_1.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stated_tags_become_route_codes() {
        assert_eq!(parse_stated("sw").as_deref(), Some("sw"));
        assert_eq!(parse_stated("pt-BR").as_deref(), Some("pt"));
        assert_eq!(parse_stated("zh_Hant").as_deref(), Some("zh"));
        assert_eq!(parse_stated("SWA").as_deref(), Some("swa"));
        assert_eq!(parse_stated("cmn").as_deref(), Some("zh"));
        assert_eq!(parse_stated("und").as_deref(), Some("und"));
        assert_eq!(parse_stated("english"), None);
        assert_eq!(parse_stated("e1"), None);
        assert_eq!(parse_stated(""), None);
    }
}
