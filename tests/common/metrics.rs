//! Reading a process's /metrics as a test sees it.

/// The metrics text `base` serves (`http://host:port`); `None` while it
/// does not answer.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> Option<String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The sum of `name`'s samples whose labels include `with`, in a metrics text.
pub fn metric_sum(text: &str, name: &str, with: Option<(&str, &str)>) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| with.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}
