//! `moebox.toml` → [`Config`].
//!
//! Properties: a config that parses re-serialises (`to_toml_string`, what `moebox up` writes
//! beside its data) into TOML that parses back to the same value; a refusal names the
//! origin, and the key when it is about one.

use moebox_config::{Config, ConfigError};

const ORIGIN: &str = "/etc/moebox/moebox.toml";

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, ORIGIN) {
        Ok(config) => {
            let written = config.to_toml_string();
            let again = Config::from_toml_str(&written, "<written>").unwrap_or_else(|error| {
                panic!("the written config does not parse: {error}\n{written}")
            });
            assert_eq!(again, config, "the written config differs:\n{written}");
        }
        Err(error) => {
            let shown = error.to_string();
            assert!(
                shown.contains(ORIGIN),
                "an error without its origin: {shown}"
            );
            match &error {
                ConfigError::Invalid { key, message, .. } => {
                    // TOML allows an empty key (`"" = 1`); refusing it names it as it is.
                    assert!(
                        !key.is_empty() || message.contains("unknown field ``"),
                        "an error without its key: {shown}"
                    );
                    assert!(!message.is_empty(), "{shown}");
                }
                ConfigError::Syntax { message, .. } => assert!(!message.is_empty()),
                ConfigError::Read { .. } => panic!("parsing text reported a read error"),
            }
        }
    }
}
