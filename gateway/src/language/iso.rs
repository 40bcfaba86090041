//! ISO 639 codes: configs, headers and the detector use the two-letter ISO 639-1 code where
//! one exists; a client may state the three-letter ISO 639-3 code instead.

/// ISO 639-3 → ISO 639-1 for the languages the detector knows, and more.
const TO_639_1: &[(&str, &str)] = &[
    ("afr", "af"),
    ("aka", "ak"),
    ("amh", "am"),
    ("ara", "ar"),
    ("arb", "ar"),
    ("aze", "az"),
    ("bel", "be"),
    ("ben", "bn"),
    ("bod", "bo"),
    ("bos", "bs"),
    ("bul", "bg"),
    ("cat", "ca"),
    ("ces", "cs"),
    ("cmn", "zh"),
    ("cym", "cy"),
    ("dan", "da"),
    ("deu", "de"),
    ("div", "dv"),
    ("ell", "el"),
    ("eng", "en"),
    ("epo", "eo"),
    ("est", "et"),
    ("eus", "eu"),
    ("fas", "fa"),
    ("fin", "fi"),
    ("fra", "fr"),
    ("gle", "ga"),
    ("guj", "gu"),
    ("hau", "ha"),
    ("heb", "he"),
    ("hin", "hi"),
    ("hrv", "hr"),
    ("hun", "hu"),
    ("hye", "hy"),
    ("ibo", "ig"),
    ("ind", "id"),
    ("isl", "is"),
    ("ita", "it"),
    ("jav", "jv"),
    ("jpn", "ja"),
    ("kan", "kn"),
    ("kat", "ka"),
    ("kaz", "kk"),
    ("khm", "km"),
    ("kor", "ko"),
    ("lao", "lo"),
    ("lat", "la"),
    ("lav", "lv"),
    ("lit", "lt"),
    ("lug", "lg"),
    ("mal", "ml"),
    ("mar", "mr"),
    ("mkd", "mk"),
    ("mon", "mn"),
    ("mri", "mi"),
    ("msa", "ms"),
    ("mya", "my"),
    ("nep", "ne"),
    ("nld", "nl"),
    ("nno", "nn"),
    ("nob", "nb"),
    ("nor", "no"),
    ("npi", "ne"),
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
    ("som", "so"),
    ("sot", "st"),
    ("spa", "es"),
    ("sqi", "sq"),
    ("srp", "sr"),
    ("swa", "sw"),
    ("swe", "sv"),
    ("swh", "sw"),
    ("tam", "ta"),
    ("tel", "te"),
    ("tgl", "tl"),
    ("tha", "th"),
    ("tsn", "tn"),
    ("tso", "ts"),
    ("tuk", "tk"),
    ("tur", "tr"),
    ("ukr", "uk"),
    ("urd", "ur"),
    ("uzb", "uz"),
    ("vie", "vi"),
    ("xho", "xh"),
    ("yid", "yi"),
    ("yor", "yo"),
    ("zho", "zh"),
    ("zsm", "ms"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stated_tags_become_route_codes() {
        assert_eq!(parse_stated("sw").as_deref(), Some("sw"));
        assert_eq!(parse_stated("pt-BR").as_deref(), Some("pt"));
        assert_eq!(parse_stated("zh_Hant").as_deref(), Some("zh"));
        assert_eq!(parse_stated("SWA").as_deref(), Some("sw"));
        assert_eq!(parse_stated("yor").as_deref(), Some("yo"));
        assert_eq!(parse_stated("gsw").as_deref(), Some("gsw"));
        assert_eq!(parse_stated("cmn").as_deref(), Some("zh"));
        assert_eq!(parse_stated("und").as_deref(), Some("und"));
        assert_eq!(parse_stated("english"), None);
        assert_eq!(parse_stated("e1"), None);
        assert_eq!(parse_stated(""), None);
    }

    #[test]
    fn every_detectable_language_has_its_three_letter_code() {
        for code in rosetta_langid::languages() {
            assert!(
                TO_639_1.iter().any(|(_, two)| *two == code),
                "{code} has no ISO 639-3 entry"
            );
        }
    }
}
