//! The plugin's configuration, as handed to `init`.

use std::fmt;
use std::str::FromStr;

/// A plugin's `config` table from the gateway config, as handed to
/// [`Plugin::init`](crate::Plugin::init).
///
/// The host flattens it to string pairs: nested tables become dotted keys
/// (`[plugins.config.dnsbl] zone = "x"` is `dnsbl.zone`), numbers and booleans their TOML
/// text (`42`, `true`), arrays JSON text (`["a","b"]`). The typed getters parse them back
/// and say which key was wrong. [`ConfigError`] converts into `String`, so `?` works in
/// `init`:
///
/// ```
/// # use mailgate_plugin_sdk::Config;
/// # fn init(config: &Config) -> Result<(), String> {
/// let limit = config.int_or("limit", 10)?;
/// let zones = config.list("zones")?.unwrap_or_default();
/// let strict = config.bool_or("strict", false)?;
/// # let _ = (limit, zones, strict); Ok(())
/// # }
/// # init(&Config::from_pairs([("limit", "5")])).unwrap();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

/// A config value that is missing, malformed or unexpected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    message: String,
}

impl ConfigError {
    /// An error about `key` (the message says what is wrong with it).
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
    /// The key the error is about.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

impl Config {
    /// A config from the pairs the host sends.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }

    /// A config from any pairs (for tests).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Config {
            entries: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `true` if `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key`, or `default` if absent.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key` as an owned string, or `default` if absent.
    pub fn string_or(&self, key: &str, default: &str) -> String {
        self.str_or(key, default).to_string()
    }

    /// The value of `key`; an error if absent.
    pub fn require(&self, key: &str) -> Result<&str, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(key, "is required"))
    }

    /// The value of `key` parsed with [`FromStr`] (`u32`, `f64`, `IpAddr`, ...), `None` if
    /// absent; an error if present but unparsable.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| {
                ConfigError::new(
                    key,
                    format!("cannot parse {v:?} as {}: {e}", std::any::type_name::<T>()),
                )
            }),
        }
    }

    /// Like [`parse`](Config::parse), with `default` if absent.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// The value of `key` as an integer, `None` if absent.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ConfigError::new(key, format!("expected an integer, got {v:?}"))),
        }
    }

    /// The value of `key` as an integer, or `default` if absent.
    pub fn int_or(&self, key: &str, default: i64) -> Result<i64, ConfigError> {
        Ok(self.int(key)?.unwrap_or(default))
    }

    /// The value of `key` as a boolean (`true`/`false`; also `yes`/`no`, `on`/`off`,
    /// `1`/`0`, any case), `None` if absent.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(Some(true)),
            "false" | "no" | "off" | "0" => Ok(Some(false)),
            _ => Err(ConfigError::new(
                key,
                format!("expected true or false, got {v:?}"),
            )),
        }
    }

    /// The value of `key` as a boolean, or `default` if absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.bool(key)?.unwrap_or(default))
    }

    /// The value of `key` as a list, `None` if absent. A JSON array of strings, numbers or
    /// booleans (how the host passes a TOML array) gives its elements as text; any other
    /// value gives a one-element list, so `zones = "a"` and `zones = ["a"]` both work.
    /// Nested arrays or tables are an error.
    pub fn list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if !v.trim_start().starts_with('[') {
            return Ok(Some(vec![v.to_string()]));
        }
        parse_json_scalar_array(v)
            .map(Some)
            .map_err(|e| ConfigError::new(key, format!("expected a list: {e}")))
    }

    /// The entries under `prefix.` (a nested table), with the prefix removed.
    pub fn section(&self, prefix: &str) -> Config {
        let dotted = format!("{prefix}.");
        Config {
            entries: self
                .entries
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(&dotted)?.to_string(), v.clone())))
                .collect(),
        }
    }

    /// An error naming the first key not in `known` (a key `a.b` is known if `a` or `a.b`
    /// is listed). Catches typos in the config at load.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        for (key, _) in &self.entries {
            let top = key.split('.').next().unwrap_or(key);
            if !known.iter().any(|k| *k == key || *k == top) {
                return Err(ConfigError::new(
                    key.as_str(),
                    format!("unknown key (expected one of: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// All entries, in the order the host sent them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` if the config is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parses `[scalar, ...]`: strings (with JSON escapes), numbers, `true`, `false`, `null`.
fn parse_json_scalar_array(text: &str) -> Result<Vec<String>, String> {
    let mut chars = text.trim().chars().peekable();
    let mut out = Vec::new();
    let skip_ws = |c: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while c.peek().is_some_and(|c| c.is_whitespace()) {
            c.next();
        }
    };
    if chars.next() != Some('[') {
        return Err("does not start with `[`".into());
    }
    skip_ws(&mut chars);
    if chars.peek() == Some(&']') {
        chars.next();
        return if chars.next().is_none() {
            Ok(out)
        } else {
            Err("text after `]`".into())
        };
    }
    loop {
        skip_ws(&mut chars);
        match chars.peek() {
            Some('"') => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            Some('/') => s.push('/'),
                            Some('b') => s.push('\u{8}'),
                            Some('f') => s.push('\u{c}'),
                            Some('n') => s.push('\n'),
                            Some('r') => s.push('\r'),
                            Some('t') => s.push('\t'),
                            Some('u') => {
                                let hi = hex4(&mut chars)?;
                                let code = if (0xD800..0xDC00).contains(&hi) {
                                    if chars.next() != Some('\\') || chars.next() != Some('u') {
                                        return Err("lone surrogate".into());
                                    }
                                    let lo = hex4(&mut chars)?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return Err("lone surrogate".into());
                                    }
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    hi
                                };
                                s.push(char::from_u32(code).ok_or("invalid \\u escape")?);
                            }
                            other => return Err(format!("bad escape {other:?}")),
                        },
                        Some(c) => s.push(c),
                    }
                }
                out.push(s);
            }
            Some('[') | Some('{') => return Err("nested arrays or tables are not supported".into()),
            Some(_) => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == ']' || c.is_whitespace() {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                let is_number = s.parse::<f64>().is_ok() && !s.starts_with('+');
                if !(is_number || s == "true" || s == "false" || s == "null") {
                    return Err(format!("unexpected value {s:?}"));
                }
                out.push(s);
            }
            None => return Err("unterminated array".into()),
        }
        skip_ws(&mut chars);
        match chars.next() {
            Some(',') => continue,
            Some(']') => break,
            other => return Err(format!("expected `,` or `]`, got {other:?}")),
        }
    }
    skip_ws(&mut chars);
    if chars.next().is_some() {
        return Err("text after `]`".into());
    }
    Ok(out)
}

/// Four hex digits of a `\u` escape.
fn hex4(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<u32, String> {
    let hex: String = chars.by_ref().take(4).collect();
    u32::from_str_radix(&hex, 16)
        .ok()
        .filter(|_| hex.len() == 4)
        .ok_or_else(|| format!("bad \\u escape {hex:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_pairs([
            ("name", "nobody"),
            ("limit", "42"),
            ("neg", "-7"),
            ("ratio", "0.5"),
            ("bad_int", "4x"),
            ("on", "true"),
            ("off", "No"),
            ("bad_bool", "maybe"),
            (
                "zones",
                r#"["zen.test", "b\"l\\\u00e9\ud83d\ude00", 3, true]"#,
            ),
            ("one", "single"),
            ("empty", "[ ]"),
            ("nested", "[[1]]"),
            ("dnsbl.zone", "z.test"),
            ("dnsbl.weight", "2"),
        ])
    }

    #[test]
    fn strings() {
        let c = cfg();
        assert_eq!(c.get("name"), Some("nobody"));
        assert_eq!(c.get("missing"), None);
        assert_eq!(c.str_or("missing", "d"), "d");
        assert_eq!(c.string_or("name", "d"), "nobody");
        assert_eq!(c.require("name"), Ok("nobody"));
        let e = c.require("missing").unwrap_err();
        assert_eq!(e.key(), "missing");
        assert_eq!(e.to_string(), "config key `missing`: is required");
        let s: String = e.into();
        assert!(s.contains("missing"));
        assert!(c.contains("limit"));
        assert_eq!(c.len(), 14);
        assert!(!c.is_empty());
        assert!(Config::default().is_empty());
    }

    #[test]
    fn ints_and_parse() {
        let c = cfg();
        assert_eq!(c.int("limit"), Ok(Some(42)));
        assert_eq!(c.int("neg"), Ok(Some(-7)));
        assert_eq!(c.int("missing"), Ok(None));
        assert_eq!(c.int_or("missing", 3), Ok(3));
        assert!(c.int("bad_int").unwrap_err().message().contains("integer"));
        assert_eq!(c.parse::<f64>("ratio"), Ok(Some(0.5)));
        assert_eq!(c.parse_or::<u32>("limit", 1), Ok(42));
        assert!(c.parse::<u32>("neg").is_err());
        assert_eq!(c.parse_or::<u8>("missing", 9), Ok(9));
    }

    #[test]
    fn bools() {
        let c = cfg();
        assert_eq!(c.bool("on"), Ok(Some(true)));
        assert_eq!(c.bool("off"), Ok(Some(false)));
        assert_eq!(c.bool_or("missing", true), Ok(true));
        assert!(c.bool("bad_bool").is_err());
    }

    #[test]
    fn lists() {
        let c = cfg();
        assert_eq!(
            c.list("zones").unwrap().unwrap(),
            vec![
                "zen.test".to_string(),
                "b\"l\\é😀".to_string(),
                "3".into(),
                "true".into()
            ]
        );
        assert_eq!(c.list("one"), Ok(Some(vec!["single".to_string()])));
        assert_eq!(c.list("empty"), Ok(Some(vec![])));
        assert_eq!(c.list("missing"), Ok(None));
        assert!(c.list("nested").is_err());
        for bad in [
            "[",
            "[\"a\"",
            "[\"a\",]",
            "[a]",
            "[1] x",
            "[\"\\x\"]",
            "[\"\\ud800\"]",
        ] {
            let c = Config::from_pairs([("k", bad)]);
            assert!(c.list("k").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sections_and_unknown_keys() {
        let c = cfg();
        let d = c.section("dnsbl");
        assert_eq!(d.get("zone"), Some("z.test"));
        assert_eq!(d.int("weight"), Ok(Some(2)));
        assert_eq!(d.len(), 2);
        let c = Config::from_pairs([("reject", "x"), ("dnsbl.zone", "z")]);
        assert!(c.deny_unknown(&["reject", "dnsbl"]).is_ok());
        assert!(c.deny_unknown(&["reject", "dnsbl.zone"]).is_ok());
        let e = c.deny_unknown(&["reject"]).unwrap_err();
        assert_eq!(e.key(), "dnsbl.zone");
        assert_eq!(c.iter().count(), 2);
    }
}
