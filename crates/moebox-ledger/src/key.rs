//! API key format: `mbx_` + 43 base62 characters of 256 random bits + 6 base62 characters of
//! CRC-32 checksum (GitHub's token layout). The checksum catches a mistyped or truncated key
//! before any database lookup; the first [`LOOKUP_LEN`] characters of the secret select the
//! row, and the SHA-256 digest of the whole key is compared in constant time.

use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};

/// Every key starts with this, so secret scanners and people recognise it.
pub const KEY_PREFIX: &str = "mbx_";
/// Base62 characters that encode the 256-bit secret (62^43 > 2^256).
pub const SECRET_LEN: usize = 43;
/// Base62 characters of the CRC-32 checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + SECRET_LEN + CHECKSUM_LEN;
/// Leading characters of the secret stored in clear to find the row (and shown by
/// `keys list`); the remaining 35 characters (208 bits) stay secret.
pub const LOOKUP_LEN: usize = 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key as presented by a client, checked for shape and checksum but not yet against the
/// database. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    text: String,
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PresentedKey({KEY_PREFIX}{}…)", self.lookup())
    }
}

/// Why a string is not a well-formed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("API keys start with `{KEY_PREFIX}`")]
    Prefix,
    #[error("API keys are {KEY_LEN} characters long")]
    Length,
    #[error("API keys contain only letters and digits after `{KEY_PREFIX}`")]
    Alphabet,
    #[error("the API key's checksum does not match: it was mistyped or truncated")]
    Checksum,
}

impl PresentedKey {
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        let body = text
            .strip_prefix(KEY_PREFIX)
            .ok_or(KeyFormatError::Prefix)?;
        if body.len() != SECRET_LEN + CHECKSUM_LEN {
            return Err(KeyFormatError::Length);
        }
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyFormatError::Alphabet);
        }
        let (secret, checksum) = body.split_at(SECRET_LEN);
        if checksum != checksum_of(secret) {
            return Err(KeyFormatError::Checksum);
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// The row selector: the secret's first [`LOOKUP_LEN`] characters.
    pub fn lookup(&self) -> &str {
        let start = KEY_PREFIX.len();
        self.text.get(start..start + LOOKUP_LEN).unwrap_or_default()
    }

    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.text.as_bytes()).into()
    }

    /// The whole key, for the one time it is shown.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

/// A fresh key from the operating system's random number generator.
pub fn generate() -> Result<PresentedKey, rand::rand_core::OsError> {
    let mut random = [0u8; 32];
    OsRng.try_fill_bytes(&mut random)?;
    let secret = base62_fixed(&random, SECRET_LEN);
    let checksum = checksum_of(&secret);
    Ok(PresentedKey {
        text: format!("{KEY_PREFIX}{secret}{checksum}"),
    })
}

/// Compares two digests in time independent of where they differ.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(difference) == 0
}

fn checksum_of(secret: &str) -> String {
    let crc = crc32(format!("{KEY_PREFIX}{secret}").as_bytes());
    base62_fixed(&crc.to_be_bytes(), CHECKSUM_LEN)
}

/// Big-endian bytes as exactly `width` base62 digits (most significant first). `width` must
/// be large enough for the value; the keys' widths are (see the constants).
fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = vec![BASE62[0]; width];
    for slot in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        *slot = BASE62[remainder as usize];
    }
    digits.into_iter().map(char::from).collect()
}

/// CRC-32 (IEEE 802.3, reflected), as zlib computes it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn base62_round_numbers() {
        assert_eq!(base62_fixed(&[0], 3), "000");
        assert_eq!(base62_fixed(&[61], 2), "0z");
        assert_eq!(base62_fixed(&[0, 62], 2), "10");
        assert_eq!(base62_fixed(&[0xff; 32], SECRET_LEN).len(), SECRET_LEN);
        // 2^256 - 1 needs all 43 digits, so the width is tight but sufficient.
        assert_ne!(&base62_fixed(&[0xff; 32], SECRET_LEN)[..1], "0");
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = generate().expect("OS random");
        let b = generate().expect("OS random");
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), KEY_LEN);
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(PresentedKey::parse(a.expose()).expect("parses"), a);
        assert_eq!(a.lookup().len(), LOOKUP_LEN);
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let key = generate().expect("OS random");
        let text = key.expose();
        let position = KEY_PREFIX.len() + 10;
        let original = text.as_bytes()[position];
        let replacement = if original == b'a' { 'b' } else { 'a' };
        let mut typo = text.to_owned();
        typo.replace_range(position..position + 1, &replacement.to_string());
        assert_eq!(PresentedKey::parse(&typo), Err(KeyFormatError::Checksum));
    }

    #[test]
    fn malformed_keys_are_named() {
        assert_eq!(PresentedKey::parse("sk-abc"), Err(KeyFormatError::Prefix));
        assert_eq!(PresentedKey::parse("mbx_abc"), Err(KeyFormatError::Length));
        let key = generate().expect("OS random");
        let mut bad = key.expose().to_owned();
        bad.replace_range(KEY_LEN - 1.., "!");
        assert_eq!(PresentedKey::parse(&bad), Err(KeyFormatError::Alphabet));
        let truncated = &key.expose()[..KEY_LEN - 1];
        assert_eq!(PresentedKey::parse(truncated), Err(KeyFormatError::Length));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = generate().expect("OS random");
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.expose()[KEY_PREFIX.len() + LOOKUP_LEN..]));
    }

    #[test]
    fn digest_comparison() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
    }
}
