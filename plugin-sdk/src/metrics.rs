//! Prometheus metrics owned by the plugin (capability `metrics`).
//!
//! The host prefixes names with `mailgate_plugin_` and adds a `plugin` label. Invalid
//! names or labels, too many label sets, or one name used with two kinds are ignored (and
//! logged once by the host). Without the grant every call does nothing.

use crate::bindings::mailgate::plugin::metrics as raw;

fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Adds `delta` to the counter `name` (the host appends `_total`).
pub fn counter_add(name: &str, labels: &[(&str, &str)], delta: u64) {
    raw::counter_add(name, &owned(labels), delta);
}

/// Adds 1 to the counter `name`.
pub fn counter_inc(name: &str, labels: &[(&str, &str)]) {
    counter_add(name, labels, 1);
}

/// Sets the gauge `name`.
pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) {
    raw::gauge_set(name, &owned(labels), value);
}

/// Records one observation in the histogram `name`.
pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
    raw::histogram_observe(name, &owned(labels), value);
}
