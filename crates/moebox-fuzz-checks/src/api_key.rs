//! The API key parser ([`PresentedKey::parse`]), on any text a client can put after
//! `Bearer `.
//!
//! Properties: a parsed key re-exposes exactly its input and has the documented shape; each
//! refusal is the first rule the text breaks; the checksum catches every single-character
//! change of a valid key (so a valid key is never one typo away from another), and `Debug`
//! never shows the secret.

use moebox_ledger::{
    KeyFormatError, PresentedKey,
    key::{CHECKSUM_LEN, KEY_LEN, KEY_PREFIX, LOOKUP_LEN, SECRET_LEN},
};

pub fn check(data: &[u8]) {
    // Headers are bytes; the gateway turns them into text before parsing, and any text must
    // be safe here, including what a lossy conversion makes of invalid UTF-8.
    match std::str::from_utf8(data) {
        Ok(text) => one(text),
        Err(_) => one(&String::from_utf8_lossy(data)),
    }
}

fn one(text: &str) {
    let result = PresentedKey::parse(text);
    match (expected_refusal(text), &result) {
        (Some(expected), Err(got)) => assert_eq!(*got, expected, "{text:?}"),
        (Some(expected), Ok(_)) => panic!("{text:?} parsed, expected {expected:?}"),
        (None, Err(got)) => assert_eq!(*got, KeyFormatError::Checksum, "{text:?}"),
        (None, Ok(key)) => valid(text, key),
    }
}

/// The refusal the documented format predicts before the checksum is looked at.
fn expected_refusal(text: &str) -> Option<KeyFormatError> {
    let Some(body) = text.strip_prefix(KEY_PREFIX) else {
        return Some(KeyFormatError::Prefix);
    };
    if body.len() != SECRET_LEN + CHECKSUM_LEN {
        return Some(KeyFormatError::Length);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Some(KeyFormatError::Alphabet);
    }
    None
}

fn valid(text: &str, key: &PresentedKey) {
    assert_eq!(key.expose(), text, "a parsed key changed its text");
    assert_eq!(text.len(), KEY_LEN);
    assert_eq!(
        key.lookup(),
        &text[KEY_PREFIX.len()..KEY_PREFIX.len() + LOOKUP_LEN]
    );
    assert_eq!(PresentedKey::parse(key.expose()).as_ref(), Ok(key));
    let shown = format!("{key:?}");
    let hidden = &text[KEY_PREFIX.len() + LOOKUP_LEN..];
    assert!(!shown.contains(hidden), "Debug shows the secret: {shown}");
    // Every single-character substitution after the prefix must fail: CRC-32 detects every
    // burst of up to 32 bits, and distinct CRCs have distinct base62 checksums.
    let bytes = text.as_bytes();
    for position in KEY_PREFIX.len()..bytes.len() {
        for replacement in [b'0', b'A', b'z'] {
            if bytes[position] == replacement {
                continue;
            }
            let mut typo = bytes.to_vec();
            typo[position] = replacement;
            let typo = String::from_utf8(typo).expect("ASCII stays UTF-8");
            assert_eq!(
                PresentedKey::parse(&typo),
                Err(KeyFormatError::Checksum),
                "one typo away from a valid key, {typo:?} parses too"
            );
        }
    }
}
