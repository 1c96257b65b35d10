//! Tokens that must never reach a log: access tokens, refresh tokens. A [`Token`] prints as
//! `[redacted]` in `Debug` and has no `Display`, so `?token` or a derived `Debug` of a struct
//! holding one cannot leak it; the value is read only with [`Token::expose`], where it is sent
//! (WeChat, Redis, the admin API's answer). Serialized as the plain string.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An access or refresh token.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The token itself, for the places that send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Token {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Token {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_and_serde_is_transparent() {
        let t = Token::new("ACCESS_TOKEN_VALUE");
        assert_eq!(format!("{t:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&t)), "Some([redacted])");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"ACCESS_TOKEN_VALUE\"");
        let back: Token = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(back.expose(), "x");
    }
}
