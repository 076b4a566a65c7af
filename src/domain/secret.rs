//! Secrets that never print, and connection strings with their passwords hidden.

use std::fmt;

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Hides the passwords of URLs in `text` (`postgres://u:secret@db/x` → `postgres://u:***@db/x`),
/// for anything that may be printed: start-up errors, driver errors, log lines. A URL's user
/// info ends at the last `@` before the host's `/`, `?` or `#`.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The user info may hold any character but these (a password may contain `/`): the
        // URL's span ends at the first of them, and its user info at the last `@` in the span
        // unless a query or fragment starts before it.
        let span = after
            .find(|c: char| matches!(c, '\'' | '"' | ',' | '>') || c.is_whitespace())
            .unwrap_or(after.len());
        let end = match after[..span].rfind('@') {
            Some(at) if !after[..at].contains(['?', '#']) => after[at..span]
                .find(['/', '?', '#'])
                .map_or(span, |i| at + i),
            _ => after[..span].find(['/', '?', '#']).unwrap_or(span),
        };
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    // `scheme://token@host`: the whole user info may be the secret.
                    None if !userinfo.is_empty() => out.push_str("***"),
                    None => {}
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_credentials(
                "Connection Error: The connection string 'postgress://u:SuperSecret123@db/x' has no supporting driver"
            ),
            "Connection Error: The connection string 'postgress://u:***@db/x' has no supporting driver"
        );
        assert_eq!(
            redact_credentials("redis://:pw@a:6379,redis://user:p%40ss@b:6380/0"),
            "redis://:***@a:6379,redis://user:***@b:6380/0"
        );
        assert_eq!(
            redact_credentials("rediss://token@cache.example.com"),
            "rediss://***@cache.example.com"
        );
        assert_eq!(
            redact_credentials("sqlite://otpgate.db?mode=rwc and https://h/p?a=b@c"),
            "sqlite://otpgate.db?mode=rwc and https://h/p?a=b@c"
        );
        assert_eq!(redact_credentials("no urls here"), "no urls here");
        assert_eq!(
            redact_credentials("redis://:ab/cd+ef@h:6379/0 next"),
            "redis://:***@h:6379/0 next"
        );
    }
}
