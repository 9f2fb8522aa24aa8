//! The `patterns` interface's host side: regex sets compiled natively, once per process.
//!
//! A plugin instance lives one session, so a plugin that compiled its rules itself would
//! compile them again in every session, and run them as wasm, many times slower than
//! native code. Here a list of patterns becomes one [`regex::RegexSet`], kept in a
//! process-wide cache keyed by the list itself: every session and plugin asking for the
//! same list shares one compiled set, whatever the generation. The cache holds at most
//! [`CACHE_SETS`] sets; when full, the least recently asked-for half is dropped (sets
//! still held by instances stay alive until those instances drop them).
//!
//! Each set is capped ([`SET_SIZE_LIMIT`] of compiled program, [`DFA_SIZE_LIMIT`] of lazy
//! DFA cache per search thread), and a pattern list is capped ([`MAX_PATTERNS`] patterns,
//! [`MAX_PATTERN_LEN`] octets each): compiling or matching never takes unbounded memory,
//! and matching is linear in the text.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use regex::{RegexSet, RegexSetBuilder};

/// Sets the cache keeps.
pub const CACHE_SETS: usize = 512;
/// Compiled program size of one set.
pub const SET_SIZE_LIMIT: usize = 8 << 20;
/// Lazy DFA cache of one set (per thread searching it).
pub const DFA_SIZE_LIMIT: usize = 2 << 20;
/// Patterns in one set.
pub const MAX_PATTERNS: usize = 4096;
/// Octets of one pattern.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Why a list of patterns was not compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// One pattern is not valid (or alone compiles to more than [`SET_SIZE_LIMIT`]).
    #[error("pattern {index}: {reason}")]
    Invalid {
        /// Its index in the list.
        index: u32,
        /// Why.
        reason: String,
    },
    /// The list or its compiled form is over a cap.
    #[error("{0}")]
    TooBig(String),
}

/// A compiled set, as a plugin's `pattern-set` resource holds it.
#[derive(Debug, Clone)]
pub struct PatternSetHandle(pub Arc<RegexSet>);

impl PatternSetHandle {
    /// Indexes of the patterns matching `text`, ascending.
    pub fn matches(&self, text: &str) -> Vec<u32> {
        self.0.matches(text).iter().map(|i| i as u32).collect()
    }

    /// Indexes of the patterns matching at least one of `texts`, ascending.
    pub fn matches_any<S: AsRef<str>>(&self, texts: &[S]) -> Vec<u32> {
        let mut hit = vec![false; self.0.len()];
        let mut left = self.0.len();
        for t in texts {
            if left == 0 {
                break;
            }
            for i in self.0.matches(t.as_ref()).iter() {
                if !hit[i] {
                    hit[i] = true;
                    left -= 1;
                }
            }
        }
        hit.iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| i as u32)
            .collect()
    }
}

/// Figures of the process-wide cache (`mailgate status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Sets held.
    pub sets: usize,
    /// Lists compiled (cache misses).
    pub compiled: u64,
    /// Lists found compiled (cache hits).
    pub hits: u64,
}

#[derive(Default)]
struct Cache {
    sets: HashMap<Vec<String>, (Arc<RegexSet>, u64)>,
    tick: u64,
    stats: CacheStats,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

/// The cache's figures now.
pub fn stats() -> CacheStats {
    let c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    CacheStats {
        sets: c.sets.len(),
        ..c.stats
    }
}

/// The compiled set of `patterns`, from the cache or compiled now (outside the cache's
/// lock: two sessions asking for a new list at once may both compile it).
pub fn compile(patterns: Vec<String>) -> Result<PatternSetHandle, PatternError> {
    if patterns.len() > MAX_PATTERNS {
        return Err(PatternError::TooBig(format!(
            "{} patterns (at most {MAX_PATTERNS})",
            patterns.len()
        )));
    }
    if let Some(i) = patterns.iter().position(|p| p.len() > MAX_PATTERN_LEN) {
        return Err(PatternError::Invalid {
            index: i as u32,
            reason: format!("longer than {MAX_PATTERN_LEN} octets"),
        });
    }
    {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        c.tick += 1;
        let tick = c.tick;
        if let Some((set, used)) = c.sets.get_mut(&patterns) {
            *used = tick;
            let set = Arc::clone(set);
            c.stats.hits += 1;
            return Ok(PatternSetHandle(set));
        }
    }
    let set = Arc::new(build(&patterns)?);
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    c.stats.compiled += 1;
    if c.sets.len() >= CACHE_SETS {
        let mut ages: Vec<u64> = c.sets.values().map(|(_, used)| *used).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 2];
        c.sets.retain(|_, (_, used)| *used > cut);
    }
    let tick = c.tick;
    c.sets.insert(patterns, (Arc::clone(&set), tick));
    Ok(PatternSetHandle(set))
}

fn build(patterns: &[String]) -> Result<RegexSet, PatternError> {
    let limits = |b: &mut RegexSetBuilder| {
        b.size_limit(SET_SIZE_LIMIT).dfa_size_limit(DFA_SIZE_LIMIT);
    };
    let mut b = RegexSetBuilder::new(patterns);
    limits(&mut b);
    match b.build() {
        Ok(set) => Ok(set),
        // Name the pattern at fault: the set's error does not say which one it is.
        Err(set_err) => {
            for (i, p) in patterns.iter().enumerate() {
                let mut one = RegexSetBuilder::new([p]);
                limits(&mut one);
                if let Err(e) = one.build() {
                    let reason = match e {
                        regex::Error::CompiledTooBig(_) => {
                            format!("compiles to more than {} MiB", SET_SIZE_LIMIT >> 20)
                        }
                        e => first_line(&e.to_string()),
                    };
                    return Err(PatternError::Invalid {
                        index: i as u32,
                        reason,
                    });
                }
            }
            Err(match set_err {
                regex::Error::CompiledTooBig(_) => PatternError::TooBig(format!(
                    "the {} patterns together compile to more than {} MiB",
                    patterns.len(),
                    SET_SIZE_LIMIT >> 20
                )),
                e => PatternError::TooBig(first_line(&e.to_string())),
            })
        }
    }
}

/// The regex crate's errors draw the pattern with a caret over several lines; the last
/// line says what is wrong.
fn first_line(e: &str) -> String {
    let last = e
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .unwrap_or_else(|| e.lines().next().unwrap_or_default());
    last.trim().trim_start_matches("error:").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_pass_finds_every_matching_pattern() {
        let set = compile(list(&[r"(?i)\bviagra\b", "cheap", r"^\d+$", "absent"])).unwrap();
        assert_eq!(set.matches("Buy VIAGRA, cheap!"), vec![0, 1]);
        assert_eq!(set.matches("12345"), vec![2]);
        assert_eq!(
            set.matches_any(&["nothing", "cheap stuff", "viagra"]),
            vec![0, 1]
        );
        assert!(set.matches_any::<&str>(&[]).is_empty());
    }

    #[test]
    fn identical_lists_share_one_compiled_set() {
        let p = list(&["shared-one", "shared-two"]);
        let a = compile(p.clone()).unwrap();
        let before = stats();
        let b = compile(p).unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert!(stats().hits > before.hits);
    }

    #[test]
    fn errors_name_the_pattern() {
        match compile(list(&["fine", "bro(ken", "also fine"])) {
            Err(PatternError::Invalid { index, reason }) => {
                assert_eq!(index, 1);
                assert!(reason.contains("unclosed"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match compile(list(&[&"a".repeat(MAX_PATTERN_LEN + 1)])) {
            Err(PatternError::Invalid { index: 0, .. }) => {}
            other => panic!("{other:?}"),
        }
        // 10,000 Unicode word classes: over the program cap, and said so.
        match compile(list(&["ok", r"(\w{100}){100}"])) {
            Err(PatternError::Invalid { index: 1, reason }) => {
                assert!(reason.contains("MiB"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
