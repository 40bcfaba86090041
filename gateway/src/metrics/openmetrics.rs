//! The OpenMetrics 1.0 text format, written from the same gathered families as the
//! Prometheus text format (the `prometheus` crate writes only the latter). Counters are
//! named without `_total` on their `TYPE` line, samples keep it; the exposition ends with
//! `# EOF`.

use std::fmt::Write;

use prometheus::proto::{LabelPair, MetricFamily, MetricType};

pub fn encode(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for family in families {
        let name = family.name();
        let (kind, base) = match family.get_field_type() {
            MetricType::COUNTER => ("counter", name.strip_suffix("_total").unwrap_or(name)),
            MetricType::GAUGE => ("gauge", name),
            MetricType::HISTOGRAM => ("histogram", name),
            MetricType::SUMMARY => ("summary", name),
            MetricType::UNTYPED => ("unknown", name),
        };
        let _ = writeln!(out, "# TYPE {base} {kind}");
        let _ = writeln!(out, "# HELP {base} {}", escape(family.help()));
        for m in family.get_metric() {
            let labels = m.get_label();
            match family.get_field_type() {
                MetricType::COUNTER => sample(
                    &mut out,
                    &format!("{base}_total"),
                    labels,
                    None,
                    m.get_counter().get_value(),
                ),
                MetricType::GAUGE => {
                    sample(&mut out, base, labels, None, m.get_gauge().get_value())
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let bucket = format!("{base}_bucket");
                    for b in h.get_bucket() {
                        let le = float(b.upper_bound());
                        sample(
                            &mut out,
                            &bucket,
                            labels,
                            Some(&le),
                            b.cumulative_count() as f64,
                        );
                    }
                    let count = h.get_sample_count() as f64;
                    sample(&mut out, &bucket, labels, Some("+Inf"), count);
                    sample(&mut out, &format!("{base}_count"), labels, None, count);
                    sample(
                        &mut out,
                        &format!("{base}_sum"),
                        labels,
                        None,
                        h.get_sample_sum(),
                    );
                }
                // Never registered here.
                MetricType::SUMMARY | MetricType::UNTYPED => {}
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

fn sample(out: &mut String, name: &str, labels: &[LabelPair], le: Option<&str>, value: f64) {
    out.push_str(name);
    let mut pairs: Vec<(&str, String)> = labels
        .iter()
        .map(|l| (l.name(), escape(l.value())))
        .collect();
    if let Some(le) = le {
        pairs.push(("le", le.to_string()));
    }
    if !pairs.is_empty() {
        out.push('{');
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", float(value));
}

fn float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// Label values and help texts: backslash, double quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    #[test]
    fn counters_histograms_and_eof() {
        let r = Registry::new();
        let c =
            IntCounterVec::new(Opts::new("vllm:prompt_tokens_total", "Tokens."), &["m"]).unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["a\"b"]).inc_by(3);
        let h = HistogramVec::new(
            HistogramOpts::new("lat_seconds", "L.").buckets(vec![0.5, 1.0]),
            &["m"],
        )
        .unwrap();
        r.register(Box::new(h.clone())).unwrap();
        h.with_label_values(&["x"]).observe(0.7);
        let text = super::encode(&r.gather());
        assert!(
            text.contains("# TYPE vllm:prompt_tokens counter\n"),
            "{text}"
        );
        assert!(
            text.contains("vllm:prompt_tokens_total{m=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{m=\"x\",le=\"0.5\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{m=\"x\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{m=\"x\",le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count{m=\"x\"} 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
