//! Prometheus metrics: one process-wide registry ([`get`]) the server, the plugin chain,
//! the resolver, the queue and reloads count into, encoded as OpenMetrics text for
//! `GET /metrics` on the admin HTTP listener ([`crate::admin_http`]).
//!
//! Counters are counted where things happen; figures that are states (queue depth, the
//! oldest message's age, plugin instances alive, open connections) are read when the
//! scrape comes ([`Metrics::observe_status`], from the same figures `mailgate status`
//! shows). Plugins' own metrics (the `metrics` capability) are kept per plugin with a
//! cap on their series ([`PluginMetrics`]) and exported as `mailgate_plugin_<name>` with a
//! `plugin` label.
//!
//! Label values are bounded sets chosen by the gateway (stages, verdicts, causes,
//! outcomes) or names from the config (listeners, plugins); a next hop is named only as
//! the kind of destination (`relay`, `mx`, `local`), never by the recipient's domain, so
//! an attacker cannot grow the series.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// Its value.
    pub kind: String,
}

/// A reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Its value.
    pub reason: String,
}

/// A message's outcome and reply class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// `accepted`, `rejected`, `tempfailed`, `discarded`, `quarantined`.
    pub outcome: String,
    /// `2xx`, `4xx`, `5xx`.
    pub class: String,
}

/// A plugin and hook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginHook {
    /// The plugin's name in the config.
    pub plugin: String,
    /// `connect`, `helo`, `mail`, `rcpt`, `data`, `deliver`.
    pub hook: String,
}

/// A plugin's verdict at a hook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginVerdict {
    /// The plugin's name.
    pub plugin: String,
    /// The hook.
    pub hook: String,
    /// `continue`, `accept`, `reject`, `tempfail`, `disconnect`, `discard`, `quarantine`.
    pub verdict: String,
}

/// Why a plugin call failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginFailure {
    /// The plugin's name.
    pub plugin: String,
    /// The hook.
    pub hook: String,
    /// `trap`, `deadline`, `memory`, `stack`, `invalid`, `init`, `capacity`.
    pub cause: String,
}

/// A DNS query's type and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `A`, `AAAA`, `MX`, `TXT`, `PTR`.
    pub rtype: String,
    /// `answer`, `empty`, `nxdomain`, `timeout`, `servfail`, `error`.
    pub outcome: String,
}

/// A delivery attempt's outcome for one recipient, by kind of destination.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `delivered`, `deferred`, `failed`.
    pub outcome: String,
    /// `relay`, `mx`, `local`, `none`.
    pub destination: String,
}

fn latency() -> Histogram {
    // 50 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(0.00005, 3.0, 11))
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    /// Connections accepted (past the connection limits).
    pub connections: Counter,
    /// Connections refused before a session, by reason.
    pub connections_refused: Family<Reason, Counter>,
    /// Connections open now.
    pub connections_open: Gauge,
    /// Messages by outcome and reply class (one per end of DATA, or a refused transaction).
    pub messages: Family<MessageLabels, Counter>,
    /// Octets of messages accepted.
    pub message_bytes: Counter,
    /// Plugin call time, per plugin and hook, seconds.
    pub plugin_call_seconds: Family<PluginHook, Histogram, fn() -> Histogram>,
    /// Plugin verdicts.
    pub plugin_verdicts: Family<PluginVerdict, Counter>,
    /// Plugin failures by cause.
    pub plugin_failures: Family<PluginFailure, Counter>,
    /// Plugin instances alive now.
    pub plugin_instances: Gauge,
    /// Of those, the ones idle in their plugin's pool (no session holds them).
    pub plugin_instances_idle: Gauge,
    /// DNS queries through the resolver.
    pub dns_queries: Family<DnsLabels, Counter>,
    /// DNS query time (the resolver's cache answers included), seconds.
    pub dns_seconds: Histogram,
    /// Delivery attempts per recipient.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// TLS handshakes with clients, by result (`ok`, `failed`).
    pub tls_handshakes: Family<Kind, Counter>,
    /// Reloads by result (`ok`, `failed`).
    pub reloads: Family<Kind, Counter>,
    /// The plugins' own metrics.
    pub plugins: PluginMetrics,
    /// State read at scrape time.
    status: Mutex<Option<Snapshot>>,
}

/// Figures that are states, read when a scrape comes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Messages in the queue.
    pub queue_messages: u64,
    /// Age of the oldest queued message, seconds.
    pub queue_oldest_seconds: f64,
    /// Spool commits (group commits of concurrent changes).
    pub queue_spool_commits: u64,
    /// Spool changes those commits made durable.
    pub queue_spool_changes: u64,
    /// The plugin generation in force.
    pub generation: u64,
    /// Answers in the verification cache.
    pub verify_cached: u64,
    /// kv calls plugins made, and those the backend was unavailable for (timeouts
    /// included), and of those the timeouts.
    pub kv_calls: u64,
    /// See `kv_calls`.
    pub kv_unavailable: u64,
    /// See `kv_calls`.
    pub kv_timeouts: u64,
    /// Whether the kv backend is failing now.
    pub kv_failing: bool,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    connections: Counter::default(),
    connections_refused: Family::default(),
    connections_open: Gauge::default(),
    messages: Family::default(),
    message_bytes: Counter::default(),
    plugin_call_seconds: Family::new_with_constructor(latency),
    plugin_verdicts: Family::default(),
    plugin_failures: Family::default(),
    plugin_instances: Gauge::default(),
    plugin_instances_idle: Gauge::default(),
    dns_queries: Family::default(),
    dns_seconds: latency(),
    deliveries: Family::default(),
    tls_handshakes: Family::default(),
    reloads: Family::default(),
    plugins: PluginMetrics::default(),
    status: Mutex::new(None),
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// The registry over [`get`]'s metrics (built per scrape: registering is cheap, and the
/// metrics keep their values across registries).
fn registry(m: &'static Metrics) -> Registry {
    let mut r = Registry::with_prefix("mailgate");
    r.register("connections", "Connections accepted", m.connections.clone());
    r.register(
        "connections_refused",
        "Connections refused before a session",
        m.connections_refused.clone(),
    );
    r.register(
        "connections_open",
        "Connections open now",
        m.connections_open.clone(),
    );
    r.register(
        "messages",
        "Messages by outcome and reply class",
        m.messages.clone(),
    );
    r.register(
        "message_bytes",
        "Octets of messages accepted",
        m.message_bytes.clone(),
    );
    r.register(
        "plugin_call_seconds",
        "Plugin call time",
        m.plugin_call_seconds.clone(),
    );
    r.register(
        "plugin_verdicts",
        "Plugin verdicts",
        m.plugin_verdicts.clone(),
    );
    r.register(
        "plugin_failures",
        "Plugin failures by cause",
        m.plugin_failures.clone(),
    );
    r.register(
        "plugin_instances",
        "Plugin instances alive",
        m.plugin_instances.clone(),
    );
    r.register(
        "plugin_instances_idle",
        "Plugin instances idle in their plugin's pool",
        m.plugin_instances_idle.clone(),
    );
    r.register(
        "dns_queries",
        "DNS queries by type and outcome",
        m.dns_queries.clone(),
    );
    r.register(
        "dns_query_seconds",
        "DNS query time (cached answers included)",
        m.dns_seconds.clone(),
    );
    r.register(
        "deliveries",
        "Delivery attempts per recipient by outcome and destination kind",
        m.deliveries.clone(),
    );
    r.register(
        "tls_handshakes",
        "TLS handshakes with clients",
        m.tls_handshakes.clone(),
    );
    r.register("reloads", "Reloads by result", m.reloads.clone());
    r.register_collector(Box::new(StatusCollector(m)));
    r.register_collector(Box::new(PluginCollector(m)));
    r
}

impl Metrics {
    /// Keeps the state figures the next scrape reports.
    pub fn observe_status(&self, s: Snapshot) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    /// A message's outcome, from the reply the client got.
    pub fn message(&self, outcome: &str, code: u16, bytes: usize) {
        self.messages
            .get_or_create(&MessageLabels {
                outcome: outcome.to_string(),
                class: format!("{}xx", code / 100),
            })
            .inc();
        if code / 100 == 2 && outcome == "accepted" {
            self.message_bytes.inc_by(bytes as u64);
        }
    }
}

/// The whole exposition, OpenMetrics text.
pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry(get()));
    out
}

#[derive(Debug)]
struct StatusCollector(&'static Metrics);

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self
            .0
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let gauges: [(&str, &str, f64); 4] = [
            (
                "queue_messages",
                "Messages in the queue",
                s.queue_messages as f64,
            ),
            (
                "queue_oldest_seconds",
                "Age of the oldest queued message",
                s.queue_oldest_seconds,
            ),
            (
                "plugin_generation",
                "Plugin generation in force",
                s.generation as f64,
            ),
            (
                "verify_cached",
                "Answers in the recipient verification cache",
                s.verify_cached as f64,
            ),
        ];
        let gauges = gauges.into_iter().chain([(
            "kv_failing",
            "1 while the kv backend (Redis) is failing",
            if s.kv_failing { 1.0 } else { 0.0 },
        )]);
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(e)?;
        }
        for (name, help, v) in [
            ("kv_calls", "kv calls plugins made", s.kv_calls),
            (
                "kv_unavailable",
                "kv calls the backend was unavailable for (timeouts included)",
                s.kv_unavailable,
            ),
            (
                "kv_timeouts",
                "kv calls the backend did not answer in time",
                s.kv_timeouts,
            ),
            (
                "queue_spool_commits",
                "Spool commits: each made the changes then waiting durable together",
                s.queue_spool_commits,
            ),
            (
                "queue_spool_changes",
                "Spool changes (new messages, state updates, removals) made durable",
                s.queue_spool_changes,
            ),
        ] {
            let c = ConstCounter::new(v);
            let e = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(e)?;
        }
        Ok(())
    }
}

/// Series one plugin may have, over all its metric names.
pub const MAX_PLUGIN_SERIES: usize = 1000;

/// What a plugin's metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginKind {
    /// Only goes up.
    Counter,
    /// Set to a value.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

#[derive(Debug)]
enum Value {
    Number(f64),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Series {
    kind: PluginKind,
    /// By sorted label set (the `plugin` label added at encoding).
    values: HashMap<Vec<(String, String)>, Value>,
}

/// The plugins' own metrics (`metrics` capability): per (plugin, name) a kind and its
/// series; a name used with another kind, or a series past [`MAX_PLUGIN_SERIES`] of the
/// plugin, is refused (the caller logs it once).
#[derive(Debug, Default)]
pub struct PluginMetrics {
    inner: Mutex<BTreeMap<(String, String), Series>>,
    /// (plugin, metric name) refused updates were logged for.
    warned: Mutex<std::collections::HashSet<(String, String)>>,
}

/// Why a plugin's metric update was not kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PluginMetricError {
    /// The name was used with another kind.
    #[error("metric {0:?} is already a {1:?}")]
    KindClash(String, PluginKind),
    /// The plugin has [`MAX_PLUGIN_SERIES`] series already.
    #[error("more than {MAX_PLUGIN_SERIES} series")]
    TooManySeries,
}

impl PluginMetrics {
    /// Whether a refused update of `plugin`'s `name` is the first (so it is logged once;
    /// at most 10 000 names are remembered, past that nothing more is logged).
    pub fn first_refusal(&self, plugin: &str, name: &str) -> bool {
        let mut w = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        w.len() < 10_000 && w.insert((plugin.to_string(), name.to_string()))
    }

    /// Applies one update of `plugin`'s metric `name` (already validated: name and labels).
    pub fn update(
        &self,
        plugin: &str,
        kind: PluginKind,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> Result<(), PluginMetricError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let series_of_plugin: usize = inner
            .range((plugin.to_string(), String::new())..)
            .take_while(|((p, _), _)| p == plugin)
            .map(|(_, s)| s.values.len())
            .sum();
        let entry = inner
            .entry((plugin.to_string(), name.to_string()))
            .or_insert_with(|| Series {
                kind,
                values: HashMap::new(),
            });
        if entry.kind != kind {
            return Err(PluginMetricError::KindClash(name.to_string(), entry.kind));
        }
        let mut key = labels.to_vec();
        key.sort();
        if !entry.values.contains_key(&key) && series_of_plugin >= MAX_PLUGIN_SERIES {
            return Err(PluginMetricError::TooManySeries);
        }
        let v = entry.values.entry(key).or_insert_with(|| match kind {
            PluginKind::Histogram => Value::Histogram(latency()),
            _ => Value::Number(0.0),
        });
        match (kind, v) {
            (PluginKind::Counter, Value::Number(n)) => *n += value.max(0.0),
            (PluginKind::Gauge, Value::Number(n)) => *n = value,
            (PluginKind::Histogram, Value::Histogram(h)) => h.observe(value),
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PluginCollector(&'static Metrics);

/// Label set of a plugin series: `plugin` first, then the plugin's own.
#[derive(Debug)]
struct Labels<'a>(&'a str, &'a [(String, String)]);

impl EncodeLabelSet for Labels<'_> {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        EncodeLabel::encode(&("plugin", self.0), encoder.encode_label())?;
        for (k, v) in self.1 {
            EncodeLabel::encode(&(k.as_str(), v.as_str()), encoder.encode_label())?;
        }
        Ok(())
    }
}

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inner = self
            .0
            .plugins
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // One descriptor per metric name over all plugins (the `plugin` label tells
        // them apart); a name two plugins use with different kinds keeps the first.
        let mut by_name: BTreeMap<&str, Vec<(&str, &Series)>> = BTreeMap::new();
        for ((plugin, name), s) in inner.iter() {
            by_name.entry(name).or_default().push((plugin, s));
        }
        for (name, all) in by_name {
            let kind = all[0].1.kind;
            let full = format!("plugin_{name}");
            let help = "A plugin's own metric (metrics capability)";
            let metric_type = match kind {
                PluginKind::Counter => ConstCounter::new(0.0f64).metric_type(),
                PluginKind::Gauge => ConstGauge::new(0.0f64).metric_type(),
                PluginKind::Histogram => latency().metric_type(),
            };
            let mut family = encoder.encode_descriptor(&full, help, None, metric_type)?;
            for (plugin, s) in all.into_iter().filter(|(_, s)| s.kind == kind) {
                for (labels, v) in &s.values {
                    let set = Labels(plugin, labels);
                    let e = family.encode_family(&set)?;
                    match v {
                        Value::Number(n) if kind == PluginKind::Counter => {
                            ConstCounter::new(*n).encode(e)?
                        }
                        Value::Number(n) => ConstGauge::new(*n).encode(e)?,
                        Value::Histogram(h) => h.encode(e)?,
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_states_and_plugin_metrics_are_encoded() {
        let m = get();
        m.connections.inc();
        m.message("accepted", 250, 1234);
        m.observe_status(Snapshot {
            queue_messages: 3,
            ..Snapshot::default()
        });
        m.plugins
            .update(
                "spam",
                PluginKind::Counter,
                "rules_fired",
                &[("rule".into(), "X".into())],
                2.0,
            )
            .unwrap();
        assert!(matches!(
            m.plugins
                .update("spam", PluginKind::Gauge, "rules_fired", &[], 1.0),
            Err(PluginMetricError::KindClash(..))
        ));
        let text = encode();
        assert!(text.contains("mailgate_connections_total "), "{text}");
        assert!(
            text.contains("mailgate_messages_total{outcome=\"accepted\",class=\"2xx\"}"),
            "{text}"
        );
        assert!(text.contains("mailgate_queue_messages 3"), "{text}");
        assert!(
            text.contains("mailgate_plugin_rules_fired_total{plugin=\"spam\",rule=\"X\"} 2"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn a_plugin_cannot_grow_past_its_series_cap() {
        let p = PluginMetrics::default();
        for i in 0..MAX_PLUGIN_SERIES {
            p.update(
                "p",
                PluginKind::Gauge,
                "g",
                &[("i".into(), i.to_string())],
                1.0,
            )
            .unwrap();
        }
        assert_eq!(
            p.update(
                "p",
                PluginKind::Gauge,
                "g",
                &[("i".into(), "new".into())],
                1.0
            ),
            Err(PluginMetricError::TooManySeries)
        );
        // An existing series still updates; another plugin has its own cap.
        p.update(
            "p",
            PluginKind::Gauge,
            "g",
            &[("i".into(), "0".into())],
            5.0,
        )
        .unwrap();
        p.update("q", PluginKind::Gauge, "g", &[], 1.0).unwrap();
    }
}
