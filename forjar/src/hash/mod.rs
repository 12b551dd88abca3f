//! Canonical encoding, closure keys and tree digests (the book: "Hashing").
//!
//! Three BLAKE3 derive-key contexts give three kinds of 32-byte value:
//! - the *closure key* of a derivation (`BuildRequest::key`, in `request`, which
//!   encodes the normalised request with this module's encoder);
//! - the key of one output or source *store entry* ([`output_key`], [`source_key`]);
//! - the *tree digest* of content ([`tree_digest`]), the public format that `verify` compares.
//!
//! The encoding under a key is tagged and length-prefixed, so that no two different requests
//! encode to the same bytes (see the book's "Hashing" chapter for the byte-exact spec).

mod cache;
mod entry;
mod host;
mod nar;
mod refs;
mod tree;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use blake3::hazmat::{self, ContextKey, HasherExt};
use serde::{Deserialize, Serialize};

use crate::name::{Name, OutputName, rules};

pub use cache::DigestCache;
pub(crate) use cache::FileId;
pub use entry::EntryName;
pub use host::HostFingerprint;
pub use nar::{file_sha256, nar_sha256};
pub use refs::Needles;
pub use tree::{
    FileDigester, HashError, HashStats, TreeHasher, file_digest, file_digest_from, tree_digest,
};

/// BLAKE3 derive-key context of closure keys.
pub const DERIVATION_CONTEXT: &str = "forjar derivation v1";
/// BLAKE3 derive-key context of output entry keys.
pub const OUTPUT_CONTEXT: &str = "forjar output v1";
/// BLAKE3 derive-key context of source entry keys.
pub const SOURCE_CONTEXT: &str = "forjar source v1";
/// BLAKE3 derive-key context of tree digests.
pub const TREE_CONTEXT: &str = "forjar tree v1";

/// Lowercase RFC 4648 base32 alphabet.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Lowercase RFC 4648 base32 without padding.
///
/// ```
/// assert_eq!(forjar::hash::base32(b"foobar"), "mzxw6ytboi");
/// ```
pub fn base32(bytes: &[u8]) -> String {
    let mut out = vec![0; (bytes.len() * 8).div_ceil(5)];
    base32_into(bytes, &mut out);
    String::from_utf8(out).expect("the base32 alphabet is ASCII")
}

/// [`base32`] into `out`, which is as long as the text is: 8 characters per 5 bytes.
pub(crate) fn base32_into(bytes: &[u8], out: &mut [u8]) {
    // Five bytes are eight characters; the last group is padded with zero bits and cut to the
    // characters its bytes make.
    let group = |five: [u8; 5]| {
        let mut word = [0; 8];
        word[3..].copy_from_slice(&five);
        let word = u64::from_be_bytes(word);
        std::array::from_fn::<u8, 8, _>(|at| BASE32[((word >> (35 - 5 * at)) & 31) as usize])
    };
    let mut groups = bytes.chunks_exact(5);
    let mut texts = out.chunks_exact_mut(8);
    for (five, text) in (&mut groups).zip(&mut texts) {
        text.copy_from_slice(&group(five.try_into().expect("a group is five bytes")));
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut five = [0; 5];
        five[..rest.len()].copy_from_slice(rest);
        let text = texts.into_remainder();
        text.copy_from_slice(&group(five)[..text.len()]);
    }
}

/// Whether `s` is a store hash: 32 characters of the lowercase base32 alphabet.
pub fn is_store_hash(s: &str) -> bool {
    s.len() == STORE_HASH_LEN && s.bytes().all(is_base32_digit)
}

/// Whether `b` is a character of the lowercase base32 alphabet ([`BASE32`]).
pub(crate) fn is_base32_digit(b: u8) -> bool {
    /// The alphabet as a table by byte value: the reference scan asks for every byte it reads.
    static DIGITS: [bool; 256] = {
        let mut table = [false; 256];
        let mut i = 0;
        while i < BASE32.len() {
            table[BASE32[i] as usize] = true;
            i += 1;
        }
        table
    };
    DIGITS[b as usize]
}

/// Length of the hash part of a store entry name.
pub const STORE_HASH_LEN: usize = 32;

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 15)] as char);
    }
    text
}

/// The bytes of lowercase hex `text`; `None` if it is not that.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes().chunks(2).map(hex_byte).collect()
}

/// The byte two lowercase hex digits make.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// [`unhex`] of exactly 32 bytes, made in place.
fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut bytes = [0; 32];
    for (byte, pair) in bytes.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(bytes)
}

/// Deserialises a string and makes a value of it with `parse`, borrowing the text where the
/// format allows (a `String` of its own was an allocation per value read).
pub(crate) fn deserialize_parsed<'de, D, T, E>(
    d: D,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    E: fmt::Display,
{
    struct Text<F>(&'static str, F);
    impl<'de, T, E: fmt::Display, F: FnOnce(&str) -> Result<T, E>> serde::de::Visitor<'de> for Text<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<Er: serde::de::Error>(self, text: &str) -> Result<T, Er> {
            (self.1)(text).map_err(Er::custom)
        }
    }
    d.deserialize_str(Text(expected, parse))
}

/// A 32-byte key of a derivation, output or source; printed as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// Wraps raw key bytes.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Key(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The store hash: the first 20 bytes in lowercase base32, 32 characters.
    pub fn store_hash(&self) -> String {
        base32(self.store_hash_bytes())
    }

    /// [`store_hash`](Key::store_hash) written into `out`.
    pub(crate) fn store_hash_into(&self, out: &mut [u8; STORE_HASH_LEN]) {
        base32_into(self.store_hash_bytes(), out);
    }

    /// The bytes [`store_hash`](Key::store_hash) is the base32 of.
    fn store_hash_bytes(&self) -> &[u8] {
        &self.0[..20]
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// A string that is not the 64 lowercase hex digits of a key or a host fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a {what} (64 lowercase hex digits)")]
pub struct BadHex {
    /// What was expected: "key" or "host fingerprint".
    pub what: &'static str,
    /// The text given.
    pub text: String,
}

/// The 32 bytes of `s`, or what it is not.
fn parse_hex32_as(what: &'static str, s: &str) -> Result<[u8; 32], BadHex> {
    parse_hex32(s).ok_or_else(|| BadHex {
        what,
        text: s.to_string(),
    })
}

impl FromStr for Key {
    type Err = BadHex;
    fn from_str(s: &str) -> Result<Self, BadHex> {
        parse_hex32_as("key", s).map(Key)
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "a key (64 hex digits)", str::parse)
    }
}

/// The digest of a tree of content, printed as `blake3:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreeDigest([u8; 32]);

impl TreeDigest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TreeDigest(bytes)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for TreeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", hex(&self.0))
    }
}

impl fmt::Debug for TreeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TreeDigest({self})")
    }
}

/// A malformed digest string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed digest `{0}`: expected `blake3:` followed by 64 lowercase hex digits")]
pub struct BadDigest(pub String);

impl FromStr for TreeDigest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, BadDigest> {
        // The common case in one pass; the rules say what is wrong with any other.
        if let Some(bytes) = s.strip_prefix("blake3:").and_then(parse_hex32) {
            return Ok(TreeDigest(bytes));
        }
        rules::digest(s)
            .map(TreeDigest)
            .map_err(|_| BadDigest(s.to_string()))
    }
}

impl Serialize for TreeDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TreeDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "a tree digest (`blake3:` and 64 hex digits)", str::parse)
    }
}

/// Size of the per-thread read buffer: large enough that BLAKE3 hashes whole chunks with its
/// widest SIMD.
pub(crate) const READ_BUFFER: usize = 1 << 20;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's read buffer of [`READ_BUFFER`] bytes, allocated on first use and
/// kept: hashing and scanning every output through one buffer per worker thread spares a
/// megabyte's allocation and page faults per build. `f` must not call it again.
pub(crate) fn with_read_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUF.with_borrow_mut(|buf| {
        if buf.len() < READ_BUFFER {
            buf.resize(READ_BUFFER, 0);
        }
        f(buf)
    })
}

/// Writes the canonical encoding into a BLAKE3 hasher in derive-key mode.
///
/// Every variable-length value is prefixed with its length as a u64 little-endian, every list
/// with its count, every field with its tag (itself length-prefixed), every option with a 0/1
/// byte: two different values can never encode to the same byte string.
///
/// A key is encoded from dozens of small values; they are gathered a BLAKE3 chunk at a time on
/// the stack, and a hasher is made only for an encoding longer than a chunk: most keys are hashed
/// in one call, from the context's key derived once per process.
pub(crate) struct Encoder {
    context: ContextKey,
    /// Made once the encoding passes a chunk.
    hasher: Option<Box<blake3::Hasher>>,
    buf: [u8; ENCODER_CHUNK],
    len: usize,
}

/// A BLAKE3 chunk.
const ENCODER_CHUNK: usize = 1024;

/// The key BLAKE3 derives from `context` for derive-key mode; those of the store's keys are
/// derived once per process.
fn context_key(context: &str) -> ContextKey {
    static DERIVED: [(&str, OnceLock<ContextKey>); 3] = [
        (DERIVATION_CONTEXT, OnceLock::new()),
        (OUTPUT_CONTEXT, OnceLock::new()),
        (SOURCE_CONTEXT, OnceLock::new()),
    ];
    match DERIVED.iter().find(|(name, _)| *name == context) {
        Some((_, key)) => *key.get_or_init(|| hazmat::hash_derive_key_context(context)),
        None => hazmat::hash_derive_key_context(context),
    }
}

impl Encoder {
    pub(crate) fn new(context: &str) -> Self {
        Encoder {
            context: context_key(context),
            hasher: None,
            buf: [0; ENCODER_CHUNK],
            len: 0,
        }
    }

    #[inline]
    fn write(&mut self, v: &[u8]) {
        if v.len() > ENCODER_CHUNK - self.len {
            return self.write_past_chunk(v);
        }
        self.buf[self.len..self.len + v.len()].copy_from_slice(v);
        self.len += v.len();
    }

    /// [`Encoder::write`] of a value that does not fit in what is left of the chunk.
    #[inline(never)]
    fn write_past_chunk(&mut self, v: &[u8]) {
        let context = &self.context;
        let hasher = self
            .hasher
            .get_or_insert_with(|| Box::new(blake3::Hasher::new_from_context_key(context)));
        hasher.update(&self.buf[..self.len]);
        self.len = 0;
        if v.len() >= ENCODER_CHUNK {
            hasher.update(v);
        } else {
            self.buf[..v.len()].copy_from_slice(v);
            self.len = v.len();
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.write(&[v]);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.write(&v.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.write(v);
        self
    }

    pub(crate) fn field(&mut self, tag: &str) -> &mut Self {
        self.bytes(tag.as_bytes())
    }

    pub(crate) fn count(&mut self, n: usize) -> &mut Self {
        self.u64(n as u64)
    }

    pub(crate) fn option(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).bytes(v),
        }
    }

    pub(crate) fn finish(&mut self) -> [u8; 32] {
        let rest = &self.buf[..std::mem::take(&mut self.len)];
        let digest = match self.hasher.take() {
            Some(mut hasher) => hasher.update(rest).finalize(),
            None => blake3::Hasher::new_from_context_key(&self.context)
                .update(rest)
                .finalize(),
        };
        *digest.as_bytes()
    }
}

/// The key of one output's store entry: the derivation key and the output name.
pub fn output_key(derivation: &Key, output: &OutputName) -> Key {
    let mut e = Encoder::new(OUTPUT_CONTEXT);
    e.bytes(derivation.as_bytes())
        .bytes(output.as_str().as_bytes());
    Key(e.finish())
}

/// The key of a source's store entry: its name and the tree digest of its content, so that
/// the same content under the same name is one entry.
pub fn source_key(name: &Name, digest: &TreeDigest) -> Key {
    let mut e = Encoder::new(SOURCE_CONTEXT);
    e.bytes(name.as_str().as_bytes()).bytes(digest.as_bytes());
    Key(e.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10, lowercased and without padding.
        let vectors = [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ];
        for (input, expected) in vectors {
            assert_eq!(base32(input.as_bytes()), expected, "{input:?}");
        }
        // Longer texts, five bytes at a time and the rest, against the bits read one by one.
        let bytes: Vec<u8> = (0..41u32).map(|i| (i * 151 + 7) as u8).collect();
        for len in 0..=bytes.len() {
            let bits: Vec<bool> = bytes[..len]
                .iter()
                .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
                .collect();
            let expected: String = bits
                .chunks(5)
                .map(|c| {
                    let v = (0..5).fold(0, |v, i| v << 1 | usize::from(c.get(i) == Some(&true)));
                    BASE32[v] as char
                })
                .collect();
            assert_eq!(base32(&bytes[..len]), expected, "{len} bytes");
        }
    }

    #[test]
    fn store_hashes_are_32_base32_characters() {
        let key = Key([0xab; 32]);
        let h = key.store_hash();
        assert_eq!(h.len(), STORE_HASH_LEN);
        assert!(is_store_hash(&h));
        assert!(!is_store_hash("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"));
        // Every character of the alphabet, and each neighbour of its ranges.
        assert!(is_store_hash("abcdefghijklmnopqrstuvwxyz234567"));
        for bad in ['1', '8', '`', '{', '0', '9', '-'] {
            let text = format!("{bad}bcdefghijklmnopqrstuvwxyz234567");
            assert!(!is_store_hash(&text), "{text}");
        }
        assert!(!is_store_hash("abcdefghijklmnopqrstuvwxyz23456"));
        let mut out = [0; STORE_HASH_LEN];
        key.store_hash_into(&mut out);
        assert_eq!(out, h.as_bytes());
    }

    #[test]
    fn keys_and_digests_read_back_from_json_with_or_without_escapes() {
        let key = Key(std::array::from_fn(|i| (i * 9) as u8));
        let digest = TreeDigest([0xc3; 32]);
        let text = serde_json::to_string(&(key, digest)).unwrap();
        assert_eq!(
            serde_json::from_str::<(Key, TreeDigest)>(&text).unwrap(),
            (key, digest)
        );
        // A string with an escape is not borrowed from the input; it reads the same.
        let escaped = text.replacen("\"0", "\"\\u0030", 1);
        assert_ne!(escaped, text);
        assert_eq!(
            serde_json::from_str::<(Key, TreeDigest)>(&escaped).unwrap(),
            (key, digest)
        );
        // Bad values name what was expected or what is wrong.
        let short = serde_json::from_str::<Key>("\"abc\"")
            .unwrap_err()
            .to_string();
        assert!(short.contains("abc"), "{short}");
        let number = serde_json::from_str::<Key>("7").unwrap_err().to_string();
        assert!(number.contains("a key (64 hex digits)"), "{number}");
        let upper = format!("\"{}\"", hex(&[0xab; 32]).to_uppercase());
        assert!(serde_json::from_str::<Key>(&upper).is_err());
        assert!(serde_json::from_str::<TreeDigest>(&format!("\"{key}\"")).is_err());
    }

    #[test]
    fn digests_and_keys_round_trip_through_text() {
        let digest = TreeDigest([7; 32]);
        let text = digest.to_string();
        assert_eq!(text, format!("blake3:{}", "07".repeat(32)));
        assert_eq!(text.parse::<TreeDigest>(), Ok(digest));
        let key = Key([0xfe; 32]);
        assert_eq!(key.to_string().parse::<Key>(), Ok(key));
    }

    #[test]
    fn malformed_digests_are_named() {
        for bad in [
            "sha256:00",
            "blake3:xyz",
            "blake3:",
            &format!("blake3:{}", "A".repeat(64)),
        ] {
            let err = bad.parse::<TreeDigest>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "malformed digest `{bad}`: expected `blake3:` followed by 64 lowercase hex digits"
                )
            );
        }
    }

    #[test]
    fn the_encoder_hashes_exactly_its_encoding_however_it_is_split() {
        // Values that fill the kept chunk exactly, cross its end and exceed it.
        for sizes in [
            vec![1016],
            vec![1000, 30, 5],
            vec![3000],
            vec![10, 2048, 7],
            vec![0; 200],
            // Every small length, each copied its own way.
            (0..=20).collect(),
            (0..=20).rev().cycle().take(150).collect(),
        ] {
            for context in [DERIVATION_CONTEXT, OUTPUT_CONTEXT, "forjar elsewhere v1"] {
                let mut e = Encoder::new(context);
                let mut plain = blake3::Hasher::new_derive_key(context);
                for (i, size) in sizes.iter().enumerate() {
                    let value: Vec<u8> = (0..*size).map(|b| (b * 7 + i) as u8).collect();
                    e.u8(i as u8).bytes(&value);
                    plain.update(&[i as u8]);
                    plain.update(&(value.len() as u64).to_le_bytes());
                    plain.update(&value);
                }
                assert_eq!(
                    e.finish(),
                    *plain.finalize().as_bytes(),
                    "{sizes:?} in {context}"
                );
            }
        }
    }

    #[test]
    fn the_encoding_is_unambiguous_across_field_boundaries() {
        let key = |parts: &[&[u8]]| {
            let mut e = Encoder::new(DERIVATION_CONTEXT);
            for p in parts {
                e.bytes(p);
            }
            e.finish()
        };
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_ne!(key(&[b"", b"x"]), key(&[b"x", b""]));
    }
}
