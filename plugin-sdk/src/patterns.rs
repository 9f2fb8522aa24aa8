//! Regular expressions the gateway compiles and runs for you, natively: [`PatternSet`].
//!
//! A plugin instance lives one SMTP session, so a regex compiled inside the plugin (with
//! the `regex` crate, say) is compiled again in every session, and runs as WebAssembly,
//! many times slower than native code. A [`PatternSet`] is compiled by the host once per
//! gateway process (every session asking for the same list of patterns gets the same
//! compiled set from the host's cache) and matches all its patterns in one pass over the
//! text. Build your sets in [`Plugin::init`](crate::Plugin::init): a bad pattern is then a
//! config error naming the pattern, and from the second session on, `new` is a cache hit.
//!
//! The syntax is the `regex` crate's (linear-time matching: no look-around, no
//! backreferences; `(?i)` and the other inline flags work). Matching time counts against
//! the hook's deadline. Not a capability: no grant is needed. Since WIT 0.1.2: a plugin
//! that uses this does not load on an older host.
//!
//! Off WebAssembly (a plugin's unit tests on the build machine) the same patterns run on
//! the `regex` crate in-process, with the same results.
//!
//! ```no_run
//! use mailgate_plugin_sdk::patterns::PatternSet;
//!
//! let rules = PatternSet::new([r"(?i)\bviagra\b", r"(?i)you have won"]).unwrap();
//! assert_eq!(rules.matches("YOU HAVE WON a prize"), vec![1]);
//! ```

use std::fmt;

/// Why a list of patterns was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternError {
    /// Pattern `index` (0-based) is not valid.
    Invalid {
        /// Its index in the list.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The patterns compile to more than the host allows.
    TooBig(String),
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Invalid { index, reason } => write!(f, "pattern {index}: {reason}"),
            PatternError::TooBig(why) => write!(f, "patterns too big: {why}"),
        }
    }
}

impl std::error::Error for PatternError {}

/// A list of patterns compiled together; see the module docs.
#[derive(Debug)]
pub struct PatternSet {
    /// `None` for an empty list (no host call at all).
    inner: Option<imp::Set>,
    len: usize,
}

impl PatternSet {
    /// Compiles `patterns` (or finds them compiled in the host's cache).
    pub fn new<I, S>(patterns: I) -> Result<PatternSet, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = patterns.into_iter().map(Into::into).collect();
        let len = list.len();
        if list.is_empty() {
            return Ok(PatternSet { inner: None, len });
        }
        Ok(PatternSet {
            inner: Some(imp::Set::compile(list)?),
            len,
        })
    }

    /// How many patterns the set holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set holds no pattern (it then never matches).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The indexes of the patterns that match somewhere in `text`, ascending.
    pub fn matches(&self, text: &str) -> Vec<usize> {
        match &self.inner {
            Some(set) => set.matches(text),
            None => Vec::new(),
        }
    }

    /// Whether any pattern matches `text`.
    pub fn is_match(&self, text: &str) -> bool {
        !self.matches(text).is_empty()
    }

    /// The indexes of the patterns that match somewhere in at least one of `texts`,
    /// ascending: one host call for all the values of a header field, say.
    pub fn matches_any(&self, texts: &[String]) -> Vec<usize> {
        match &self.inner {
            Some(set) if !texts.is_empty() => set.matches_any(texts),
            _ => Vec::new(),
        }
    }
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::PatternError;
    use crate::bindings::mailgate::plugin::patterns as raw;

    #[derive(Debug)]
    pub struct Set(raw::PatternSet);

    impl Set {
        pub fn compile(list: Vec<String>) -> Result<Set, PatternError> {
            raw::compile(&list).map(Set).map_err(|e| match e {
                raw::PatternError::Invalid((index, reason)) => PatternError::Invalid {
                    index: index as usize,
                    reason,
                },
                raw::PatternError::TooBig(why) => PatternError::TooBig(why),
            })
        }
        pub fn matches(&self, text: &str) -> Vec<usize> {
            self.0
                .matches(text)
                .into_iter()
                .map(|i| i as usize)
                .collect()
        }
        pub fn matches_any(&self, texts: &[String]) -> Vec<usize> {
            self.0
                .matches_any(texts)
                .into_iter()
                .map(|i| i as usize)
                .collect()
        }
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::PatternError;

    #[derive(Debug)]
    pub struct Set(regex::RegexSet);

    impl Set {
        pub fn compile(list: Vec<String>) -> Result<Set, PatternError> {
            if let Ok(set) = regex::RegexSet::new(&list) {
                return Ok(Set(set));
            }
            for (index, p) in list.iter().enumerate() {
                if let Err(e) = regex::Regex::new(p) {
                    return Err(PatternError::Invalid {
                        index,
                        reason: e.to_string(),
                    });
                }
            }
            Err(PatternError::TooBig(format!("{} patterns", list.len())))
        }
        pub fn matches(&self, text: &str) -> Vec<usize> {
            self.0.matches(text).into_iter().collect()
        }
        pub fn matches_any(&self, texts: &[String]) -> Vec<usize> {
            let mut hit = vec![false; self.0.len()];
            for t in texts {
                for i in self.0.matches(t).iter() {
                    hit[i] = true;
                }
            }
            (0..hit.len()).filter(|&i| hit[i]).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_match_in_one_pass_and_name_bad_patterns() {
        let set = PatternSet::new(["(?i)cheap", r"^\d+$", "never"]).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.matches("CHEAP 42"), vec![0]);
        assert_eq!(
            set.matches_any(&["7".to_string(), "cheap".to_string()]),
            vec![0, 1]
        );
        assert!(!set.is_match("nothing here"));
        let empty = PatternSet::new(Vec::<String>::new()).unwrap();
        assert!(empty.is_empty() && empty.matches("x").is_empty());
        match PatternSet::new(["ok", "(unclosed"]) {
            Err(PatternError::Invalid { index: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
