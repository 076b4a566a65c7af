//! Reading the environment: the process environment, then `.env` for what is unset, then
//! `NAME_FILE` for secrets; typed access with errors that name the variable.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A configuration value that was missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub message: String,
}

pub(crate) fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Typed access to a lookup function, with errors that name the variable.
pub(crate) struct Vars<'a>(pub(crate) &'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    /// The value, with empty strings treated as unset (as `.env` templates leave them).
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    pub(crate) fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| invalid(name, format!("{raw:?} is not valid: {e}"))),
        }
    }

    /// A number within `range` (inclusive), else an error naming the variable and the range.
    pub(crate) fn ranged<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display,
        T::Err: fmt::Display,
    {
        let value = self.parse(name, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(invalid(
                name,
                format!("must be between {} and {}", range.start(), range.end()),
            ))
        }
    }

    /// A comma-separated list; unset means empty.
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, format!("expected true or false, got {v:?}"))),
            },
        }
    }
}

pub(crate) fn required(
    env: &Vars<'_>,
    var: &'static str,
    because: &str,
) -> Result<String, ConfigError> {
    env.get(var)
        .ok_or_else(|| invalid(var, format!("required {because}")))
}

/// A provider base URL: `http(s)://…` without a trailing slash.
pub(crate) fn base_url(
    env: &Vars<'_>,
    var: &'static str,
    default: &str,
) -> Result<String, ConfigError> {
    let url = env.get(var).unwrap_or_else(|| default.into());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid(
            var,
            "must start with https:// (or http:// for a local stand-in)",
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The process environment, then `.env` in the working directory for what is unset.
pub fn env_lookup() -> impl Fn(&str) -> Option<String> {
    let dotenv = std::fs::read_to_string(".env")
        .map(|text| parse_dotenv(&text))
        .unwrap_or_default();
    move |name| {
        std::env::var(name)
            .ok()
            .or_else(|| dotenv.get(name).cloned())
    }
}

/// Variables that may also come from a file named by `NAME_FILE` (Kubernetes secrets mounted as
/// files). A set `NAME` wins over `NAME_FILE`.
pub const SECRET_VARIABLES: &[&str] = &[
    "JWT_SECRET_KEY",
    "OTP_PEPPER",
    "DATABASE_URL",
    "REDIS_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_WEBHOOK_SECRET",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "METRICS_TOKEN",
];

pub(crate) fn read_secret_files(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut found = HashMap::new();
    for name in SECRET_VARIABLES {
        if lookup(name).is_some_and(|v| !v.trim().is_empty()) {
            continue;
        }
        let file_var = format!("{name}_FILE");
        if let Some(path) = lookup(&file_var).filter(|p| !p.trim().is_empty()) {
            let value = std::fs::read_to_string(path.trim()).map_err(|e| ConfigError {
                var: name,
                message: format!("{file_var}: cannot read {path:?}: {e}"),
            })?;
            found.insert(
                name.to_string(),
                value.trim_end_matches(['\r', '\n']).to_string(),
            );
        }
    }
    Ok(found)
}

/// Parses `.env` text: `KEY=value` lines, `#` comments, optional `export`, optional quotes.
pub fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = match (value.chars().next(), value.chars().last()) {
                (Some(q @ ('"' | '\'')), Some(end)) if value.len() >= 2 && end == q => {
                    &value[1..value.len() - 1]
                }
                // An unquoted value may carry a trailing ` # comment`.
                _ => value.split(" #").next().unwrap_or(value).trim_end(),
            };
            Some((key.trim().to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines() {
        let env = parse_dotenv(
            "# comment\nexport A=1\nB = \"two words\"\nC='x#y'\nD=plain # trailing\n\nbroken\n",
        );
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "x#y");
        assert_eq!(env["D"], "plain");
        assert!(!env.contains_key("broken"));
    }
}
