//! Recording (HDR histograms, per-second series) and reporting (progress line, summary
//! table, report.json, report.svg).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, 1 µs .. 10 min, 3 significant digits.
fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

#[derive(Default, Clone)]
pub struct Second {
    pub checks: u64,
    pub bytes: u64,
    pub errors: u64,
    pub lat: Option<Histogram<u64>>,
}

pub struct Recorder {
    pub checks: Histogram<u64>,
    pub pieces: Histogram<u64>,
    pub series: Vec<Second>,
    pub checks_done: u64,
    pub updates_offered: u64,
    pub downloads_done: u64,
    pub bytes: u64,
    pub errors: u64,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    pub verified: u64,
    pub verify_failures: u64,
    pub resumed: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            checks: hist(),
            pieces: hist(),
            series: Vec::new(),
            checks_done: 0,
            updates_offered: 0,
            downloads_done: 0,
            bytes: 0,
            errors: 0,
            error_kinds: Default::default(),
            verified: 0,
            verify_failures: 0,
            resumed: 0,
        }
    }
}

impl Recorder {
    fn second(&mut self, at: Duration) -> &mut Second {
        let i = at.as_secs() as usize;
        if self.series.len() <= i {
            self.series.resize(i + 1, Second::default());
        }
        &mut self.series[i]
    }

    pub fn check(&mut self, at: Duration, latency: Duration, update: bool) {
        let us = latency.as_micros().max(1) as u64;
        let _ = self.checks.record(us);
        self.checks_done += 1;
        if update {
            self.updates_offered += 1;
        }
        let s = self.second(at);
        s.checks += 1;
        let _ = s.lat.get_or_insert_with(hist).record(us);
    }

    pub fn piece(&mut self, latency: Duration) {
        let _ = self.pieces.record(latency.as_micros().max(1) as u64);
    }

    pub fn bytes(&mut self, at: Duration, n: u64) {
        self.bytes += n;
        self.second(at).bytes += n;
    }

    pub fn error(&mut self, at: Duration, kind: &str) {
        self.errors += 1;
        *self.error_kinds.entry(kind.to_string()).or_insert(0) += 1;
        self.second(at).errors += 1;
    }
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub http2: bool,
    pub duration_secs: f64,
    pub devices: u64,
    pub arrivals: u64,
    pub checks: u64,
    pub checks_per_sec: f64,
    pub check_p50_ms: f64,
    pub check_p99_ms: f64,
    pub check_p999_ms: f64,
    pub check_max_ms: f64,
    pub updates_offered: u64,
    pub downloads: u64,
    pub download_bytes: u64,
    pub download_bytes_per_sec: f64,
    pub piece_p50_ms: f64,
    pub piece_p99_ms: f64,
    pub verified: u64,
    pub verify_failures: u64,
    pub resumed: u64,
    pub errors: u64,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    pub series: Vec<SeriesPoint>,
}

#[derive(Serialize, Clone)]
pub struct SeriesPoint {
    pub second: usize,
    pub checks: u64,
    pub bytes: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

pub fn build(
    r: &Recorder,
    scenario: &str,
    target: &str,
    http2: bool,
    elapsed: Duration,
    devices: u64,
    arrivals: u64,
) -> Report {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let series = r
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (p50, p99, p999) = s
                .lat
                .as_ref()
                .map_or((0.0, 0.0, 0.0), |h| (ms(h, 0.5), ms(h, 0.99), ms(h, 0.999)));
            SeriesPoint {
                second: i,
                checks: s.checks,
                bytes: s.bytes,
                errors: s.errors,
                p50_ms: p50,
                p99_ms: p99,
                p999_ms: p999,
            }
        })
        .collect();
    Report {
        scenario: scenario.into(),
        target: target.into(),
        http2,
        duration_secs: secs,
        devices,
        arrivals,
        checks: r.checks_done,
        checks_per_sec: r.checks_done as f64 / secs,
        check_p50_ms: ms(&r.checks, 0.5),
        check_p99_ms: ms(&r.checks, 0.99),
        check_p999_ms: ms(&r.checks, 0.999),
        check_max_ms: if r.checks.is_empty() {
            0.0
        } else {
            r.checks.max() as f64 / 1000.0
        },
        updates_offered: r.updates_offered,
        downloads: r.downloads_done,
        download_bytes: r.bytes,
        download_bytes_per_sec: r.bytes as f64 / secs,
        piece_p50_ms: ms(&r.pieces, 0.5),
        piece_p99_ms: ms(&r.pieces, 0.99),
        verified: r.verified,
        verify_failures: r.verify_failures,
        resumed: r.resumed,
        errors: r.errors,
        error_kinds: r.error_kinds.clone(),
        series,
    }
}

pub fn summary(rep: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "\n| {} against {} ({}) | value |\n|---|---|\n",
        rep.scenario,
        rep.target,
        if rep.http2 { "HTTP/2" } else { "HTTP/1.1" }
    ));
    let rows: Vec<(&str, String)> = vec![
        ("duration s", format!("{:.1}", rep.duration_secs)),
        ("arrivals", rep.arrivals.to_string()),
        ("checks", rep.checks.to_string()),
        ("checks/s", format!("{:.0}", rep.checks_per_sec)),
        (
            "check p50 / p99 / p99.9 / max ms",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                rep.check_p50_ms, rep.check_p99_ms, rep.check_p999_ms, rep.check_max_ms
            ),
        ),
        ("updates offered", rep.updates_offered.to_string()),
        ("downloads completed", rep.downloads.to_string()),
        (
            "download MB/s",
            format!("{:.1}", rep.download_bytes_per_sec / 1e6),
        ),
        (
            "piece p50 / p99 ms",
            format!("{:.2} / {:.2}", rep.piece_p50_ms, rep.piece_p99_ms),
        ),
        (
            "verified / failed",
            format!("{} / {}", rep.verified, rep.verify_failures),
        ),
        ("resumed", rep.resumed.to_string()),
        ("errors", format!("{} {:?}", rep.errors, rep.error_kinds)),
    ];
    for (k, v) in rows {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    s
}

/// Two panels over time: throughput (checks/s, MB/s) and check latency percentiles.
pub fn svg(rep: &Report) -> String {
    let (w, h, pad) = (960.0, 560.0, 60.0);
    let panel_h = (h - 3.0 * pad) / 2.0;
    let n = rep.series.len().max(2) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let line = |vals: Vec<f64>, top: f64, max: f64, color: &str| {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    x(i),
                    top + panel_h - panel_h * (v / max.max(1e-9)).min(1.0)
                )
            })
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        )
    };
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    out.push_str(&format!(
        "<text x=\"{pad}\" y=\"20\" font-size=\"15\">{} — {} ({:.0} s, {} errors)</text>\n",
        rep.scenario, rep.target, rep.duration_secs, rep.errors
    ));
    for (k, (title, top)) in [
        ("throughput per second", pad),
        ("check latency per second (ms)", 2.0 * pad + panel_h),
    ]
    .iter()
    .enumerate()
    {
        out.push_str(&format!("<rect x=\"{pad}\" y=\"{top}\" width=\"{}\" height=\"{panel_h}\" fill=\"none\" stroke=\"#888\"/>\n", w - 2.0 * pad));
        out.push_str(&format!(
            "<text x=\"{pad}\" y=\"{}\">{title}</text>\n",
            top - 6.0
        ));
        let _ = k;
    }
    let checks: Vec<f64> = rep.series.iter().map(|p| p.checks as f64).collect();
    let mbs: Vec<f64> = rep.series.iter().map(|p| p.bytes as f64 / 1e6).collect();
    let cmax = checks.iter().cloned().fold(0.0, f64::max);
    let bmax = mbs.iter().cloned().fold(0.0, f64::max);
    out.push_str(&line(checks, pad, cmax, "#1f77b4"));
    out.push_str(&line(mbs, pad, bmax, "#2ca02c"));
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#1f77b4\">checks/s (max {cmax:.0})</text>\n",
        w - 300.0,
        pad + 16.0
    ));
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#2ca02c\">MB/s (max {bmax:.1})</text>\n",
        w - 300.0,
        pad + 32.0
    ));
    let top2 = 2.0 * pad + panel_h;
    let lmax = rep.series.iter().map(|p| p.p999_ms).fold(0.0, f64::max);
    for (vals, color, label) in [
        (
            rep.series.iter().map(|p| p.p50_ms).collect::<Vec<_>>(),
            "#1f77b4",
            "p50",
        ),
        (
            rep.series.iter().map(|p| p.p99_ms).collect(),
            "#ff7f0e",
            "p99",
        ),
        (
            rep.series.iter().map(|p| p.p999_ms).collect(),
            "#d62728",
            "p99.9",
        ),
    ] {
        out.push_str(&line(vals, top2, lmax, color));
        let _ = label;
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\">p50 (blue) p99 (orange) p99.9 (red); max {lmax:.2} ms</text>\n",
        w - 380.0,
        top2 + 16.0
    ));
    out.push_str(&format!(
        "<text x=\"{pad}\" y=\"{}\">0 s</text><text x=\"{}\" y=\"{}\">{} s</text>\n",
        h - pad + 18.0,
        w - pad - 30.0,
        h - pad + 18.0,
        rep.series.len()
    ));
    out.push_str("</svg>\n");
    out
}
