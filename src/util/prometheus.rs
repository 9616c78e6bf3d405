//! Rendering a metrics registry as Prometheus text (format 0.0.4), for every `/metrics` handler.

use prometheus_client::registry::Registry;

/// The `Content-Type` of Prometheus' text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `registry` in Prometheus text format.
pub(crate) fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(8 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// An axum response carrying `registry`'s text, or 500 if it cannot be encoded.
pub(crate) fn response(registry: &Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    match render(registry) {
        Ok(text) => ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode metrics",
        )
            .into_response(),
    }
}

/// Values read at scrape time (a handler's own snapshot), encoded as gauges and counters.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    series: Vec<(Vec<(&'static str, String)>, i64)>,
}

impl Snapshot {
    fn family(&mut self, name: &'static str, help: &'static str, counter: bool) -> &mut Family {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    counter,
                    series: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[at]
    }

    /// A gauge series (`labels` empty for a plain gauge).
    pub(crate) fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        v: i64,
    ) {
        self.family(name, help, false).series.push((labels, v));
    }

    /// A counter series; `name` without `_total` (the encoder adds it).
    pub(crate) fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        v: u64,
    ) {
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        self.family(name, help, true).series.push((labels, v));
    }

    /// The snapshot as a `/metrics` response.
    pub(crate) fn into_response(self) -> axum::response::Response {
        let mut r = Registry::default();
        r.register_collector(Box::new(self));
        response(&r)
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        for f in &self.families {
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut m = enc.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, v) in &f.series {
                let e = m.encode_family(labels)?;
                if f.counter {
                    ConstCounter::new(u64::try_from(*v).unwrap_or(0)).encode(e)?;
                } else {
                    ConstGauge::new(*v).encode(e)?;
                }
            }
        }
        Ok(())
    }
}
