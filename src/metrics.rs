//! Prometheus metrics (prometheus-client text format) at `/metrics` on their own listener, 127.0.0.1 by default.
//!
//! Components keep plain atomic counters on their hot paths and register a [`Source`]; a scrape asks every source
//! for a snapshot. Nothing is computed between scrapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up; exposed with a `_total` suffix.
    Counter,
    /// A current level (connections, allocations).
    Gauge,
}

/// One value of one series.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

impl Sample {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
        Sample { name, help, kind: Kind::Counter, labels: Vec::new(), value }
    }
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Sample {
        Sample { name, help, kind: Kind::Gauge, labels: Vec::new(), value }
    }
    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Sample {
        self.labels.push((key, value.into()));
        self
    }
}

/// Something that reports metrics on scrape.
pub trait Source: Send + Sync + 'static {
    fn collect(&self, out: &mut Vec<Sample>);
}

/// Every registered source; lives in the daemon's context.
#[derive(Default)]
pub struct Metrics {
    sources: RwLock<Vec<Arc<dyn Source>>>,
    pub http: Arc<HttpStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("sources", &self.sources.read().len()).finish()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.register(m.http.clone());
        m
    }

    pub fn register(&self, source: Arc<dyn Source>) {
        self.sources.write().push(source);
    }

    /// All current values (for tests and `doctor`).
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for s in self.sources.read().iter() {
            s.collect(&mut out);
        }
        out
    }

    /// The Prometheus text exposition of every source plus build info.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("ponte");
        registry.register("build", "ponte build information", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        registry.register_collector(Box::new(Snapshot(self.samples())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

#[derive(Debug)]
struct Snapshot(Vec<Sample>);

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Group by name, keeping first-seen order, so each family gets one HELP/TYPE header.
        let mut names: Vec<&'static str> = Vec::new();
        for s in &self.0 {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
        for name in names {
            let group: Vec<&Sample> = self.0.iter().filter(|s| s.name == name).collect();
            let first = group[0];
            let ty = match first.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(name, first.help, None, ty)?;
            for s in group {
                let labels: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if labels.is_empty() {
                    encode_value(s, &mut family)?;
                } else {
                    let mut m = family.encode_family(&labels)?;
                    encode_value(s, &mut m)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(s: &Sample, enc: &mut prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
    match s.kind {
        Kind::Counter => enc.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&s.value, None),
        Kind::Gauge => enc.encode_gauge(&(s.value as i64)),
    }
}

/// HTTP request counts by status class.
#[derive(Debug, Default)]
pub struct HttpStats {
    by_class: [AtomicU64; 5],
}

impl HttpStats {
    pub fn record(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }
}

impl Source for HttpStats {
    fn collect(&self, out: &mut Vec<Sample>) {
        for (i, c) in self.by_class.iter().enumerate() {
            out.push(
                Sample::counter("http_responses", "HTTP responses by status class", c.load(Ordering::Relaxed))
                    .label("code", format!("{}xx", i + 1)),
            );
        }
    }
}

/// A tiny parser of the text format, for tests and `doctor`: `(series with labels, value)`.
pub fn parse_text(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                out.push((series.to_string(), v));
            }
        }
    }
    out
}

/// Value of one series by its exact text (`name{labels}`), summed if it appears more than once.
pub fn value_of(parsed: &[(String, f64)], series: &str) -> Option<f64> {
    let hits: Vec<f64> = parsed.iter().filter(|(s, _)| s == series).map(|(_, v)| *v).collect();
    if hits.is_empty() {
        None
    } else {
        Some(hits.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_labels_and_build_info() {
        struct S;
        impl Source for S {
            fn collect(&self, out: &mut Vec<Sample>) {
                out.push(Sample::gauge("ws_clients", "WebSocket clients", 3));
                out.push(Sample::counter("relayed_bytes", "bytes", 10).label("direction", "to_peer"));
                out.push(Sample::counter("relayed_bytes", "bytes", 20).label("direction", "to_client"));
            }
        }
        let m = Metrics::new();
        m.register(Arc::new(S));
        m.http.record(200);
        m.http.record(404);
        let text = m.render();
        let parsed = parse_text(&text);
        assert_eq!(value_of(&parsed, "ponte_ws_clients"), Some(3.0), "{text}");
        assert_eq!(value_of(&parsed, "ponte_relayed_bytes_total{direction=\"to_client\"}"), Some(20.0), "{text}");
        assert_eq!(value_of(&parsed, "ponte_http_responses_total{code=\"4xx\"}"), Some(1.0), "{text}");
        assert!(text.contains(&format!("ponte_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{text}");
        assert_eq!(text.matches("# TYPE ponte_relayed_bytes counter").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
