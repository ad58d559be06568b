//! Prometheus text exposition (format 0.0.4) for every role's `/metrics`: counters and
//! gauges by label set, and fixed-bucket latency histograms.
//!
//! Written here rather than taken from a client crate: what the roles expose is a few
//! families of atomics rendered on scrape, the text format is small and stable, and a
//! registry with its own types would sit beside (not replace) the counters each role
//! already keeps for its audit summaries. Label values come from fixed vocabularies
//! (reason codes, modes, sources) and are escaped anyway.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets (seconds) for calls that should take milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The text of one scrape, family by family.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// A counter or gauge family: `samples` are (label set as rendered by [`labels`],
    /// value); an empty label set is the family's single sample.
    pub fn family(&mut self, name: &str, kind: &str, help: &str, samples: impl IntoIterator<Item = (String, u64)>) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{} {value}", braced(&labels));
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut cumulative = 0;
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = histogram.count.load(Ordering::Relaxed);
        let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = write!(self.out, "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {sum}\n{name}_count {total}\n");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn braced(labels: &str) -> String {
    if labels.is_empty() { String::new() } else { format!("{{{labels}}}") }
}

/// `k1="v1",k2="v2"`, values escaped as the text format requires.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Counts by label set.
#[derive(Debug, Default)]
pub struct LabelledCounter(Mutex<BTreeMap<String, u64>>);

impl LabelledCounter {
    pub fn add(&self, pairs: &[(&str, &str)], n: u64) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(labels(pairs)).or_default() += n;
        }
    }

    pub fn inc(&self, pairs: &[(&str, &str)]) {
        self.add(pairs, 1);
    }

    pub fn samples(&self) -> Vec<(String, u64)> {
        self.0.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default()
    }
}

/// A fixed-bucket histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative): observations above the previous bound, up to this one.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b)
            && let Some(bucket) = self.counts.get(i)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::new(&[0.01, 0.1]);
        for ms in [5, 50, 50, 500] {
            h.observe(Duration::from_millis(ms));
        }
        let mut e = Exposition::default();
        e.histogram("x_seconds", "help", &h);
        let text = e.finish();
        for line in [
            "x_seconds_bucket{le=\"0.01\"} 1",
            "x_seconds_bucket{le=\"0.1\"} 3",
            "x_seconds_bucket{le=\"+Inf\"} 4",
            "x_seconds_sum 0.605",
            "x_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let c = LabelledCounter::default();
        c.inc(&[("reason", "a\"b\\c\nd"), ("mode", "jump")]);
        let mut e = Exposition::default();
        e.family("y_total", "counter", "help", c.samples());
        assert!(e.finish().contains("y_total{reason=\"a\\\"b\\\\c\\nd\",mode=\"jump\"} 1"));
    }
}
