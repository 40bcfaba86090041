//! The n-gram profiles, loaded once from `data/ngrams.bin` (written by `langid/profiles`
//! from lingua's models) into an inverted index: n-gram → the languages that have it and
//! its cost in each.
//!
//! File format (little endian): `RLID`, version byte 1, u16 language count, then per
//! language: u8 length + ISO 639-1 code, u8 length + script name, u32 entry count, and per
//! entry u8 length + the n-gram's UTF-8 bytes (1 to 3 characters) + u8 cost: -ln P(a),
//! -ln P(b | a) or -ln P(c | ab), in 1/8 nat.

use crate::script::Script;
use rustc_hash::FxHashMap;
use std::sync::LazyLock;

static DATA: &[u8] = include_bytes!("../data/ngrams.bin");

pub(crate) static PROFILES: LazyLock<Profiles> =
    LazyLock::new(|| Profiles::parse(DATA).expect("langid/data/ngrams.bin is well formed"));

/// One language's cost for an n-gram.
#[derive(Clone, Copy)]
pub(crate) struct Posting {
    pub language: u8,
    pub cost: u8,
}

pub(crate) struct Profiles {
    /// ISO 639-1 codes; a posting's `language` indexes this.
    pub languages: Vec<&'static str>,
    /// Per script, the indices of the languages written in it.
    pub by_script: [Vec<u8>; Script::COUNT],
    /// Packed n-gram → (start, len) in `postings`.
    index: FxHashMap<u64, (u32, u32)>,
    postings: Vec<Posting>,
}

/// A unigram, bigram or trigram of one word as a number: 21 bits per character, so the
/// three orders never collide (no letter is U+0000).
pub(crate) fn pack(chars: impl IntoIterator<Item = char>) -> u64 {
    chars.into_iter().fold(0, |key, c| (key << 21) | c as u64)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos + n;
        let out = self.data.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.bytes(n)?).map_err(|e| e.to_string())
    }
}

impl Profiles {
    fn parse(data: &'static [u8]) -> Result<Self, String> {
        let mut r = Reader { data, pos: 0 };
        if r.bytes(5)? != b"RLID\x01" {
            return Err("not a version 1 profiles file".into());
        }
        let count = r.u16()? as usize;
        if count > u8::MAX as usize {
            return Err("too many languages".into());
        }
        let mut languages = Vec::with_capacity(count);
        let mut by_script: [Vec<u8>; Script::COUNT] = Default::default();
        let mut grouped: FxHashMap<u64, Vec<Posting>> = FxHashMap::default();
        for language in 0..count as u8 {
            let code = r.str()?;
            let script_name = r.str()?;
            let script = Script::from_name(script_name)
                .ok_or_else(|| format!("unknown script {script_name}"))?;
            for _ in 0..r.u32()? {
                let gram = r.str()?;
                let cost = r.u8()?;
                if (1..=3).contains(&gram.chars().count()) {
                    grouped
                        .entry(pack(gram.chars()))
                        .or_default()
                        .push(Posting { language, cost });
                }
            }
            by_script[script.index()].push(language);
            languages.push(code);
        }
        let mut index = FxHashMap::with_capacity_and_hasher(grouped.len(), Default::default());
        let mut postings = Vec::new();
        for (key, list) in grouped {
            index.insert(key, (postings.len() as u32, list.len() as u32));
            postings.extend(list);
        }
        Ok(Self {
            languages,
            by_script,
            index,
            postings,
        })
    }

    /// The languages that have this n-gram, with its cost in each.
    pub fn lookup(&self, key: u64) -> &[Posting] {
        match self.index.get(&key) {
            Some(&(start, len)) => &self.postings[start as usize..(start + len) as usize],
            None => &[],
        }
    }
}
