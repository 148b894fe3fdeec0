//! Client IDs: CSPRNG generation and forgiving parsing of typed IDs (tokens and tickets are in `keys`).

use std::fmt;

use rand::Rng;

/// No `0 o 1 l i`: the characters people misread when an ID is read aloud or copied from a screen.
pub const ALPHABET: &[u8; 31] = b"23456789abcdefghjkmnpqrstuvwxyz";
pub const ID_LEN: usize = 8;

/// A client ID: 8 canonical lowercase characters of [`ALPHABET`]. `Copy` so the hub can key maps with it cheaply.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id([u8; ID_LEN]);

impl Id {
    /// A fresh random ID. Uniqueness among live clients is the hub's job (it retries on a clash).
    pub fn random() -> Id {
        // ThreadRng is a CSPRNG (ChaCha, reseeded from the OS); `random_range` is unbiased.
        let mut rng = rand::rng();
        let mut b = [0u8; ID_LEN];
        for c in &mut b {
            *c = ALPHABET[rng.random_range(0..ALPHABET.len())];
        }
        Id(b)
    }

    /// Parse what a person typed or pasted: case-insensitive, and anything that is not an ASCII letter or digit
    /// (spaces, `-`, `.`) is dropped. Letters outside the alphabet (`o`, `l`, `i`) and zero/one make it invalid
    /// rather than being guessed at: a wrong guess would connect to a stranger.
    pub fn parse(input: &str) -> Option<Id> {
        let mut b = [0u8; ID_LEN];
        let mut n = 0;
        for c in input.bytes() {
            if !c.is_ascii_alphanumeric() {
                continue;
            }
            let c = c.to_ascii_lowercase();
            if !ALPHABET.contains(&c) || n == ID_LEN {
                return None;
            }
            b[n] = c;
            n += 1;
        }
        (n == ID_LEN).then_some(Id(b))
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from ALPHABET bytes, which are ASCII.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The grouped form shown to people: `k7m2-x9p4`.
    pub fn display(&self) -> String {
        let s = self.as_str();
        format!("{}-{}", &s[..4], &s[4..])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.as_str())
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// For the envelopes nodes of a cluster exchange (`signaling/remote.rs`): a malformed ID is an error, never guessed.
impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::parse(&s).filter(|id| id.as_str() == s).ok_or_else(|| serde::de::Error::custom("not a client ID"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_use_alphabet_and_differ() {
        let a = Id::random();
        assert!(a.as_str().bytes().all(|c| ALPHABET.contains(&c)));
        assert_eq!(a.as_str().len(), 8);
        assert_ne!(a, Id::random());
        assert_eq!(a.display().len(), 9);
    }

    #[test]
    fn parse_is_forgiving_but_strict_about_letters() {
        let id = Id::parse("k7m2x9p4").unwrap();
        assert_eq!(Id::parse("K7M2-X9P4"), Some(id));
        assert_eq!(Id::parse(" k7m2 x9p4 "), Some(id));
        assert_eq!(Id::parse("k7m2.x9p4"), Some(id));
        assert_eq!(Id::parse("k7m2x9p"), None);
        assert_eq!(Id::parse("k7m2x9p44"), None);
        assert_eq!(Id::parse("k7m2x9po"), None, "o is not in the alphabet");
        assert_eq!(Id::parse("k7m2x9p1"), None);
        assert_eq!(Id::parse("ķ7m2x9p4"), None);
        assert_eq!(Id::parse(""), None);
    }
}
