//! Reading the service's `/metrics` (Prometheus / OpenMetrics text) the way
//! a scraper does: every sample with its labels parsed, so a check sums a
//! family over its labels instead of matching one printed line.
//!
//! Guarantees: a name the text does not declare (no `# TYPE` line, no
//! sample) and that is not one of onceflow's documented labelled series
//! ([`LABELLED_SERIES`]) is an error, never a zero, so a misspelt name or a
//! renamed metric makes the check fail instead of passing silently.

use std::collections::BTreeMap;

use crate::bail;
use crate::error::Result;

/// onceflow's series with labels (README, "Metrics"). prometheus-client
/// prints nothing at all for a labelled family before its first sample, so
/// for these (and only these) an absent series is a sum of 0.
pub const LABELLED_SERIES: &[&str] = &[
    "onceflow_dlq_records_total",
    "onceflow_txn_aborts_total",
    "onceflow_consumer_lag",
    "onceflow_circuit_breaker_transitions_total",
    "onceflow_actor_restarts_total",
];

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// the sample's name as printed (`onceflow_txn_aborts_total`)
    pub name: String,
    /// its labels
    pub labels: BTreeMap<String, String>,
    /// its value
    pub value: f64,
}

/// A parsed `/metrics` body.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// every sample, in order
    pub samples: Vec<Sample>,
    /// families declared by `# TYPE name kind`
    pub families: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses a Prometheus or OpenMetrics text body. Comment lines other
    /// than `# TYPE` and `# EOF` are skipped; a malformed sample line is an
    /// error.
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut metrics = Metrics::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE")
                    && let (Some(name), Some(kind)) = (words.next(), words.next())
                {
                    metrics.families.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            match parse_sample(line) {
                Some(sample) => metrics.samples.push(sample),
                None => bail!("metrics line {}: cannot parse {line:?}", number + 1),
            }
        }
        Ok(metrics)
    }

    /// Whether `name` (a sample name such as `x_total`, or a family `x`) is
    /// declared or has a sample.
    pub fn knows(&self, name: &str) -> bool {
        LABELLED_SERIES.contains(&name)
            || self.samples.iter().any(|sample| sample.name == name)
            || self.families.contains_key(name)
            || family_of(name).is_some_and(|family| self.families.contains_key(family))
    }

    /// The sum of every sample named `name` whose labels include all of
    /// `labels` (an empty filter sums over all label values). A counter
    /// whose family is declared but has no sample yet sums to 0; an unknown
    /// name is an error.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        if !self.knows(name) {
            bail!("metric {name} is not exposed");
        }
        Ok(self
            .samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
            })
            .map(|sample| sample.value)
            .sum())
    }

    /// The sum of `name` per value of the label `label`.
    pub fn by_label(&self, name: &str, label: &str) -> Result<BTreeMap<String, f64>> {
        if !self.knows(name) {
            bail!("metric {name} is not exposed");
        }
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for sample in self.samples.iter().filter(|sample| sample.name == name) {
            let key = sample.labels.get(label).cloned().unwrap_or_default();
            *out.entry(key).or_default() += sample.value;
        }
        Ok(out)
    }
}

/// The family a sample name belongs to (`x_total` → `x`).
fn family_of(name: &str) -> Option<&str> {
    [
        "_total", "_created", "_bucket", "_sum", "_count", "_gcount", "_gsum",
    ]
    .iter()
    .find_map(|suffix| name.strip_suffix(suffix))
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices();
        let mut key = String::new();
        let end;
        loop {
            let (index, c) = chars.next()?;
            match c {
                '}' => {
                    end = index + 1;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key).trim().to_owned(), value);
                }
                other => key.push(other),
            }
        }
        rest = &after_brace[end..];
    }
    // The value, then an optional timestamp and an optional exemplar.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP onceflow_txn_aborts Aborted cycles.\n\
        # TYPE onceflow_txn_aborts counter\n\
        onceflow_txn_aborts_total{reason=\"abortable\"} 3\n\
        onceflow_txn_aborts_total{reason=\"fenced_or_fatal\"} 1\n\
        # TYPE onceflow_records_consumed counter\n\
        onceflow_records_consumed_total 42\n\
        # TYPE onceflow_actor_restarts counter\n\
        # TYPE onceflow_lag gauge\n\
        onceflow_lag{partition=\"0\",topic=\"a \\\"b\\\"\"} 7 1700000000\n\
        # EOF\n";

    #[test]
    fn sums_a_family_over_its_labels() -> Result<()> {
        let metrics = Metrics::parse(BODY)?;
        assert_eq!(metrics.sum("onceflow_txn_aborts_total", &[])?, 4.0);
        assert_eq!(
            metrics.sum("onceflow_txn_aborts_total", &[("reason", "abortable")])?,
            3.0
        );
        assert_eq!(
            metrics.sum("onceflow_txn_aborts_total", &[("reason", "other")])?,
            0.0
        );
        assert_eq!(metrics.sum("onceflow_records_consumed_total", &[])?, 42.0);
        assert_eq!(
            metrics.sum("onceflow_lag", &[("topic", "a \"b\"")])?,
            7.0,
            "escaped quotes in label values"
        );
        Ok(())
    }

    #[test]
    fn a_declared_counter_without_samples_is_zero_an_unknown_name_an_error() -> Result<()> {
        let metrics = Metrics::parse(BODY)?;
        assert_eq!(metrics.sum("onceflow_actor_restarts_total", &[])?, 0.0);
        // A documented labelled series before its first sample (the
        // family is not printed at all).
        let empty = Metrics::parse("# TYPE onceflow_records_consumed counter\n")?;
        assert_eq!(empty.sum("onceflow_txn_aborts_total", &[])?, 0.0);
        assert!(metrics.sum("onceflow_txn_abort_total", &[]).is_err());
        assert!(empty.sum("onceflow_records_consumed", &[]).is_ok());
        assert!(empty.sum("onceflow_txn_commits_total", &[]).is_err());
        assert!(Metrics::parse("x{a=\"1\" 3\n").is_err());
        Ok(())
    }
}
