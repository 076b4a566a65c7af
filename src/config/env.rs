//! Reading the environment: the process environment, then `.env` for what is unset, then
//! `NAME_FILE` for secrets; typed access with errors that name the variable.

use std::cell::RefCell;
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

/// Every configuration problem found, in the order the variables were read: start-up and
/// `otpgate check` report them all at once rather than one per restart.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The first problem (the one a reader fixes first).
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }

    /// Whether some problem names `var`.
    pub fn names(&self, var: &str) -> bool {
        self.0.iter().any(|e| e.var == var)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            all => {
                write!(f, "{} configuration errors:", all.len())?;
                for e in all {
                    write!(f, "\n  {}: {}", e.var, e.message)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(err: ConfigError) -> Self {
        Self(vec![err])
    }
}

/// Typed access to a lookup function, with errors that name the variable. A malformed value
/// is recorded and its default used, so reading goes on and every problem is reported
/// ([`Vars::finish`]).
pub(crate) struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: RefCell<Vec<ConfigError>>,
}

impl<'a> Vars<'a> {
    pub(crate) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            lookup,
            errors: RefCell::new(Vec::new()),
        }
    }

    /// Records a problem found while reading; reading goes on.
    pub(crate) fn report(&self, err: ConfigError) {
        self.errors.borrow_mut().push(err);
    }

    /// A section's value, or `None` with its problem recorded.
    pub(crate) fn section<T>(&self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.report(e)).ok()
    }

    /// Every problem recorded, or `Ok` when there was none.
    pub(crate) fn finish(self) -> Result<(), ConfigErrors> {
        let errors = self.errors.into_inner();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Vars<'_> {
    /// The value, with empty strings treated as unset (as `.env` templates leave them).
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// The value parsed, or `default` when unset; a malformed value is recorded and `default`
    /// returned.
    pub(crate) fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse() {
                Ok(value) => Ok(value),
                Err(e) => {
                    self.report(invalid(name, format!("{raw:?} is not valid: {e}")));
                    Ok(default)
                }
            },
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
        T: FromStr + PartialOrd + fmt::Display + Clone,
        T::Err: fmt::Display,
    {
        let value = self.parse(name, default.clone())?;
        if range.contains(&value) {
            Ok(value)
        } else {
            self.report(invalid(
                name,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
            Ok(default)
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
                _ => {
                    self.report(invalid(name, format!("expected true or false, got {v:?}")));
                    Ok(default)
                }
            },
        }
    }
}

/// The value of `var`, which is required: when missing, the problem is recorded (reading goes
/// on) and an empty value returned.
pub(crate) fn required(
    env: &Vars<'_>,
    var: &'static str,
    because: &str,
) -> Result<String, ConfigError> {
    Ok(env.get(var).unwrap_or_else(|| {
        env.report(invalid(var, format!("required {because}")));
        String::new()
    }))
}

/// A provider base URL: `http(s)://…` without a trailing slash.
pub(crate) fn base_url(
    env: &Vars<'_>,
    var: &'static str,
    default: &str,
) -> Result<String, ConfigError> {
    let url = env.get(var).unwrap_or_else(|| default.into());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        env.report(invalid(
            var,
            "must start with https:// (or http:// for a local stand-in)",
        ));
        return Ok(default.to_string());
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
    "SMS_HTTP_SECRET",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_WEBHOOK_SECRET",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "METRICS_TOKEN",
    "ADMIN_API_KEYS",
    "TEST_PHONE_NUMBERS",
    "EVENT_WEBHOOK_SECRET",
    "CAPTCHA_SECRET",
    "PLAY_INTEGRITY_CREDENTIALS",
];

/// The secrets of `NAME_FILE` variables; a file that cannot be read is a problem in `errors`.
pub(crate) fn read_secret_files(
    lookup: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> HashMap<String, String> {
    let mut found = HashMap::new();
    for name in SECRET_VARIABLES {
        if lookup(name).is_some_and(|v| !v.trim().is_empty()) {
            continue;
        }
        let file_var = format!("{name}_FILE");
        if let Some(path) = lookup(&file_var).filter(|p| !p.trim().is_empty()) {
            match std::fs::read_to_string(path.trim()) {
                Ok(value) => {
                    found.insert(
                        name.to_string(),
                        value.trim_end_matches(['\r', '\n']).to_string(),
                    );
                }
                Err(e) => errors.push(ConfigError {
                    var: name,
                    message: format!("{file_var}: cannot read {path:?}: {e}"),
                }),
            }
        }
    }
    found
}

/// Parses `.env` text: `KEY=value` lines, `#` comments, optional `export`, optional quotes.
/// Lines that do not parse are skipped ([`dotenv_problems`] says which and why).
pub fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| dotenv_line(line).ok().flatten())
        .collect()
}

/// The `.env` lines [`parse_dotenv`] skips, with their 1-based numbers and why.
pub fn dotenv_problems(text: &str) -> Vec<(usize, &'static str)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| dotenv_line(line).err().map(|why| (i + 1, why)))
        .collect()
}

/// One `.env` line: nothing (blank or comment), a pair, or why it does not parse.
fn dotenv_line(line: &str) -> Result<Option<(String, String)>, &'static str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (key, value) = line.split_once('=').ok_or("expected KEY=value")?;
    let key = key.trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("the name may only have letters, digits and _");
    }
    let value = value.trim();
    let value = match value.chars().next() {
        Some(q @ ('"' | '\'')) => {
            if value.len() < 2 || !value.ends_with(q) {
                return Err("the quoted value has no closing quote");
            }
            &value[1..value.len() - 1]
        }
        // An unquoted value may carry a trailing ` # comment`.
        _ => value.split(" #").next().unwrap_or(value).trim_end(),
    };
    Ok(Some((key.to_string(), value.to_string())))
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
