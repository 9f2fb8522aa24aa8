//! The plugin's configuration, as handed to `init`.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
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

    /// The value of `key` as a list of tables (a TOML array of tables, e.g.
    /// `rules = [{ domain = "a.test", action = "mx" }]`), each as a `Config` of its own
    /// (nested tables as dotted keys, like the top level), `None` if absent. Anything but
    /// an array of tables is an error naming `key`.
    pub fn tables(&self, key: &str) -> Result<Option<Vec<Config>>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items: Vec<serde_json::Value> = serde_json::from_str(v)
            .map_err(|_| ConfigError::new(key, "expected a list of tables"))?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if !item.is_object() {
                return Err(ConfigError::new(format!("{key}[{i}]"), "expected a table"));
            }
            let mut entries = Vec::new();
            flatten("", item, &mut entries);
            out.push(Config::new(entries));
        }
        Ok(Some(out))
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

/// What a plugin makes of its config (parsed tables, compiled rules), kept across the
/// sessions an instance serves.
///
/// The gateway reuses an instance for session after session and runs
/// [`Plugin::init`](crate::Plugin::init) at the start of each, with the same config until a
/// reload brings new instances. Keep a `PerConfig` in a `thread_local!` and ask it in
/// `init`: it runs `make` only when the config differs from the one it last saw (it keeps
/// that one only), and hands out the same [`Rc`] otherwise.
///
/// ```
/// use std::rc::Rc;
/// use mailgate_plugin_sdk::{Config, PerConfig};
///
/// struct Tables {
///     limit: i64,
/// }
///
/// thread_local! {
///     static TABLES: PerConfig<Tables> = const { PerConfig::new() };
/// }
///
/// fn tables(config: &Config) -> Result<Rc<Tables>, String> {
///     TABLES.with(|t| {
///         t.get_or_make(config, |c| Ok(Tables { limit: c.int_or("limit", 10)? }))
///     })
/// }
///
/// let config = Config::from_pairs([("limit", "5")]);
/// let first = tables(&config).unwrap();
/// assert_eq!(first.limit, 5);
/// assert!(Rc::ptr_eq(&first, &tables(&config).unwrap()));
/// ```
pub struct PerConfig<T> {
    last: RefCell<Option<(Config, Rc<T>)>>,
}

impl<T> PerConfig<T> {
    /// Empty: the first call makes.
    pub const fn new() -> Self {
        PerConfig {
            last: RefCell::new(None),
        }
    }

    /// What `make` made of `config`, made now only if `config` is not the last one seen.
    /// A failure is returned and nothing is kept.
    pub fn get_or_make<E>(
        &self,
        config: &Config,
        make: impl FnOnce(&Config) -> Result<T, E>,
    ) -> Result<Rc<T>, E> {
        if let Some((seen, made)) = &*self.last.borrow()
            && seen == config
        {
            return Ok(Rc::clone(made));
        }
        let made = Rc::new(make(config)?);
        *self.last.borrow_mut() = Some((config.clone(), Rc::clone(&made)));
        Ok(made)
    }
}

impl<T> Default for PerConfig<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for PerConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerConfig")
            .field("holds", &self.last.borrow().is_some())
            .finish()
    }
}

/// Parses `[scalar, ...]`: strings, numbers, `true`, `false`, `null`, each as its text.
fn parse_json_scalar_array(text: &str) -> Result<Vec<String>, String> {
    let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                Err("nested arrays or tables are not supported".to_string())
            }
            scalar => Ok(scalar.to_string()),
        })
        .collect()
}

/// `value` flattened into `out` the way the host flattens a plugin's config table:
/// nested tables as dotted keys under `prefix`, arrays as JSON text, scalars as text.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_config_makes_once_per_config_and_keeps_no_failure() {
        let cache: PerConfig<String> = PerConfig::new();
        let (a, b) = (
            Config::from_pairs([("k", "a")]),
            Config::from_pairs([("k", "b")]),
        );
        let mut makes = 0;
        let mut make = |c: &Config| -> Result<String, String> {
            makes += 1;
            c.get("k").map(str::to_string).ok_or("no k".into())
        };
        let first = cache.get_or_make(&a, &mut make).unwrap();
        assert!(Rc::ptr_eq(
            &first,
            &cache.get_or_make(&a, &mut make).unwrap()
        ));
        assert_eq!(*cache.get_or_make(&b, &mut make).unwrap(), "b");
        assert!(cache.get_or_make(&Config::default(), &mut make).is_err());
        // The failure kept nothing: `b` is still the last config seen, and not made again.
        assert_eq!(*cache.get_or_make(&b, &mut make).unwrap(), "b");
        assert_eq!(makes, 3);
    }

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
    fn tables() {
        let c = Config::from_pairs([
            (
                "rules",
                r#"[{"domain": "a.test", "action": "relay", "relay": {"host": "h", "port": 25}, "tags": ["x"]}, {"action": "mx"}]"#,
            ),
            ("scalar", "3"),
            ("mixed", r#"[{"a": 1}, 2]"#),
        ]);
        let rules = c.tables("rules").unwrap().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].get("domain"), Some("a.test"));
        assert_eq!(rules[0].get("relay.host"), Some("h"));
        assert_eq!(rules[0].int("relay.port"), Ok(Some(25)));
        assert_eq!(rules[0].list("tags"), Ok(Some(vec!["x".to_string()])));
        assert_eq!(rules[1].get("action"), Some("mx"));
        assert_eq!(c.tables("missing"), Ok(None));
        assert_eq!(c.tables("scalar").unwrap_err().key(), "scalar");
        assert_eq!(c.tables("mixed").unwrap_err().key(), "mixed[1]");
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
