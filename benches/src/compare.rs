//! Results of a side-by-side comparison (`tern-compare`): values per scenario, metric,
//! broker and round; medians; ratios tern/peer (and tern/tern-base, against a baseline build
//! of tern); targets met or missed; and the Markdown report (`benches/RESULTS.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::scenarios::retained::median;

/// The column of the baseline build of tern (`tern-compare --tern-baseline`), and the prefix
/// of its variants' columns where a scenario runs tern in variants (`tern-base batched`
/// beside `tern batched`).
pub const BASELINE: &str = "tern-base";

/// Whether a column is the baseline build of tern.
pub fn is_baseline(label: &str) -> bool {
    label.starts_with(BASELINE)
}

/// Whether a column is the tern under test (`tern`, `tern batched`; not the baseline).
pub fn is_tern(label: &str) -> bool {
    label.starts_with("tern") && !is_baseline(label)
}

/// The baseline's column for a column of the tern under test: `tern` -> `tern-base`,
/// `tern batched` -> `tern-base batched`.
pub fn baseline_of(label: &str) -> Option<String> {
    if !is_tern(label) {
        return None;
    }
    label
        .strip_prefix("tern")
        .map(|rest| format!("{BASELINE}{rest}"))
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Context, not a score (e.g. memory before the run).
    Neither,
}

impl Better {
    fn text(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::Neither => "",
        }
    }
}

/// One measured quantity of a scenario, per broker, one value per round (`None`: the round
/// failed or did not measure it).
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub better: Better,
    pub values: BTreeMap<String, Vec<Option<f64>>>,
}

impl Metric {
    pub fn median(&self, broker: &str) -> Option<f64> {
        let v: Vec<f64> = self.values.get(broker)?.iter().flatten().copied().collect();
        median(&v)
    }
}

/// Whether a target of the issue is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotMeasured => "not measured",
        }
    }

    /// `Met` if `ok` says so, `NotMeasured` for `None`.
    pub fn from(ok: Option<bool>) -> Verdict {
        match ok {
            Some(true) => Verdict::Met,
            Some(false) => Verdict::Missed,
            None => Verdict::NotMeasured,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub text: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Section {
    /// Scenario name on the command line (`fan-in`).
    pub id: String,
    pub title: String,
    /// What ran, in a sentence or two.
    pub setup: String,
    /// Broker labels, in column order.
    pub brokers: Vec<String>,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
    /// Rounds that failed: (broker, message).
    pub failures: Vec<(String, String)>,
    pub targets: Vec<Target>,
}

impl Section {
    pub fn new(id: &str, title: &str, setup: &str, brokers: &[String]) -> Section {
        Section {
            id: id.to_string(),
            title: title.to_string(),
            setup: setup.to_string(),
            brokers: brokers.to_vec(),
            metrics: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Adds one round's value of a metric (created on first use, in that order).
    pub fn record(&mut self, name: &str, unit: &str, better: Better, broker: &str, v: Option<f64>) {
        let i = match self.metrics.iter().position(|m| m.name == name) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    name: name.to_string(),
                    unit: unit.to_string(),
                    better,
                    values: BTreeMap::new(),
                });
                self.metrics.len() - 1
            }
        };
        self.metrics[i]
            .values
            .entry(broker.to_string())
            .or_default()
            .push(v.filter(|x| x.is_finite()));
    }

    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    pub fn median(&self, metric: &str, broker: &str) -> Option<f64> {
        self.metric(metric)?.median(broker)
    }

    /// Median of `a` over median of `b`.
    pub fn ratio(&self, metric: &str, a: &str, b: &str) -> Option<f64> {
        let (x, y) = (self.median(metric, a)?, self.median(metric, b)?);
        (y != 0.0).then_some(x / y)
    }

    pub fn fail(&mut self, broker: &str, message: &str) {
        self.failures
            .push((broker.to_string(), message.to_string()));
    }

    pub fn target(&mut self, text: &str, verdict: Verdict, detail: String) {
        self.targets.push(Target {
            text: text.to_string(),
            verdict,
            detail,
        });
    }

    /// (tern label, other label) pairs for the ratio columns: every column of the tern
    /// under test against every peer, then against its baseline's column where one ran
    /// (the baseline is no peer: it gets no ratio of its own, the targets being about tern).
    fn ratio_pairs(&self) -> Vec<(String, String)> {
        let terns: Vec<&String> = self.brokers.iter().filter(|b| is_tern(b)).collect();
        let peers: Vec<&String> = self
            .brokers
            .iter()
            .filter(|b| !b.starts_with("tern"))
            .collect();
        let mut out = Vec::new();
        for t in &terns {
            for p in &peers {
                out.push(((*t).clone(), (*p).clone()));
            }
        }
        for t in &terns {
            if let Some(base) = baseline_of(t).filter(|b| self.brokers.contains(b)) {
                out.push(((*t).clone(), base));
            }
        }
        out
    }

    /// The section in Markdown: title, setup, the table of medians and ratios, targets,
    /// notes, failures, and every round's values.
    pub fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n{}\n\n", self.title, self.setup);
        let pairs = self.ratio_pairs();
        s.push_str("| metric | better |");
        for b in &self.brokers {
            let _ = write!(s, " {b} |");
        }
        for (t, p) in &pairs {
            let _ = write!(s, " {t} / {p} |");
        }
        s.push_str("\n| --- | --- |");
        for _ in 0..self.brokers.len() + pairs.len() {
            s.push_str(" ---: |");
        }
        s.push('\n');
        for m in &self.metrics {
            let unit = if m.unit.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.unit)
            };
            let _ = write!(s, "| {}{unit} | {} |", m.name, m.better.text());
            for b in &self.brokers {
                let _ = write!(s, " {} |", fmt_opt(m.median(b)));
            }
            for (t, p) in &pairs {
                let r = match (m.better, m.median(t), m.median(p)) {
                    (Better::Neither, _, _) => None,
                    (_, Some(x), Some(y)) if y != 0.0 => Some(x / y),
                    _ => None,
                };
                let _ = write!(s, " {} |", r.map_or("".to_string(), |r| format!("{r:.2}x")));
            }
            s.push('\n');
        }
        s.push('\n');
        if !self.targets.is_empty() {
            s.push_str("Targets:\n\n");
            for t in &self.targets {
                let _ = writeln!(s, "- {}: {} ({})", t.text, t.verdict.text(), t.detail);
            }
            s.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(s, "{n}\n");
        }
        if !self.failures.is_empty() {
            s.push_str("Failed rounds:\n\n");
            for (b, m) in &self.failures {
                let first = m.lines().next().unwrap_or("");
                let _ = writeln!(s, "- {b}: {first}");
            }
            s.push('\n');
        }
        s.push_str("<details><summary>every round (in run order)</summary>\n\n");
        s.push_str("| metric |");
        for b in &self.brokers {
            let _ = write!(s, " {b} |");
        }
        s.push_str("\n| --- |");
        for _ in &self.brokers {
            s.push_str(" --- |");
        }
        s.push('\n');
        for m in &self.metrics {
            let _ = write!(s, "| {} |", m.name);
            for b in &self.brokers {
                let v = m.values.get(b).map_or(String::new(), |v| {
                    v.iter().map(|x| fmt_opt(*x)).collect::<Vec<_>>().join(", ")
                });
                let _ = write!(s, " {v} |");
            }
            s.push('\n');
        }
        s.push_str("\n</details>\n\n");
        s
    }
}

/// A number for a table: thousands separators from 1,000, fewer decimals as it grows.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), fmt_num)
}

/// The machine the run happened on.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub ram_gib: f64,
    pub kernel: String,
}

impl Machine {
    /// From `/proc/cpuinfo`, `/proc/meminfo`, `/proc/sys/kernel/osrelease` and the number
    /// of CPUs this process may use.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            ram_gib: ram_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// What heads the report.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub date: String,
    pub commit: String,
    pub machine: Machine,
    /// (program, version) of the brokers.
    pub versions: Vec<(String, String)>,
    /// The command line that produced the report.
    pub command: String,
    /// Settings of the run (rounds, durations...).
    pub settings: Vec<String>,
    /// Minutes the whole comparison took.
    pub minutes: f64,
}

/// The whole report in Markdown.
pub fn render(header: &Header, sections: &[Section]) -> String {
    let mut s = String::from("# tern side by side with Mosquitto and rumqttd\n\n");
    s.push_str(
        "Written by `tern-compare` (`scripts/bench.sh`; see `benches/README.md`). Do not edit by \
         hand: run it again.\n\n",
    );
    let m = &header.machine;
    let _ = writeln!(s, "- date: {}", header.date);
    let _ = writeln!(s, "- commit: {}", header.commit);
    let _ = writeln!(
        s,
        "- machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}",
        m.cpus, m.cpu_model, m.ram_gib, m.kernel
    );
    s.push_str(
        "- **the load tool and the broker share this machine's cores**: every figure is the \
         broker *and* the tool competing for the same CPUs; one broker runs at a time\n",
    );
    for (p, v) in &header.versions {
        let _ = writeln!(s, "- {p}: {v}");
    }
    let _ = writeln!(
        s,
        "- command: `{}` ({:.0} minutes)",
        header.command, header.minutes
    );
    for line in &header.settings {
        let _ = writeln!(s, "- {line}");
    }
    s.push_str(
        "\nEach scenario runs every broker in turn, fresh (new process, new data directory), \
         round after round, the starting broker rotating from round to round (A B C, B C A, \
         C A B, ...); tables give the median over the rounds, and ratios are tern's median \
         over the peer's (for a `higher` metric a ratio above 1 favours tern, for a `lower` \
         one below 1 does). Figures from different runs of the command are not comparable: \
         the machine is shared and noisy.",
    );
    if sections
        .iter()
        .any(|sec| sec.brokers.iter().any(|b| is_baseline(b)))
    {
        s.push_str(
            " `tern-base` is a second build of tern (the baseline above), configured, started \
             and alternated exactly like tern; the `tern / tern-base` columns are new over \
             old, read like the ratios to the peers, and no target is about them.",
        );
    }
    s.push_str("\n\n");
    let targets: Vec<(&Section, &Target)> = sections
        .iter()
        .flat_map(|sec| sec.targets.iter().map(move |t| (sec, t)))
        .collect();
    if !targets.is_empty() {
        s.push_str(
            "## Targets\n\n| scenario | target | verdict | figures |\n| --- | --- | --- | --- |\n",
        );
        for (sec, t) in targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                sec.id,
                t.text,
                t.verdict.text(),
                t.detail
            );
        }
        s.push('\n');
    }
    for sec in sections {
        s.push_str(&sec.markdown());
    }
    s
}

/// `YYYY-MM-DD HH:MM UTC` for a time.
pub fn utc_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn numbers_and_dates() {
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(-1500.0), "-1,500");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14 22:13 UTC"
        );
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01 00:00 UTC");
    }

    #[test]
    fn medians_ratios_and_markdown() {
        let brokers = vec!["tern".to_string(), "mosquitto".to_string()];
        let mut s = Section::new("fan-in", "1. fan-in", "4 publishers", &brokers);
        for (t, m) in [(300.0, 100.0), (200.0, 120.0), (250.0, 110.0)] {
            s.record("delivered", "msgs/s", Better::Higher, "tern", Some(t));
            s.record("delivered", "msgs/s", Better::Higher, "mosquitto", Some(m));
        }
        s.record("p99", "us", Better::Lower, "tern", None);
        assert_eq!(s.median("delivered", "tern"), Some(250.0));
        assert_eq!(
            s.ratio("delivered", "tern", "mosquitto"),
            Some(250.0 / 110.0)
        );
        assert_eq!(s.median("p99", "tern"), None);
        s.target("tern >= 2x mosquitto", Verdict::Met, "2.27x".into());
        let md = s.markdown();
        assert!(
            md.contains("| delivered (msgs/s) | higher | 250 | 110 | 2.27x |"),
            "{md}"
        );
        assert!(md.contains("300, 200, 250"), "{md}");
        let all = render(&Header::default(), &[s]);
        assert!(
            all.contains("| fan-in | tern >= 2x mosquitto | met | 2.27x |"),
            "{all}"
        );
        assert!(!all.contains("tern-base"), "{all}");
    }

    #[test]
    fn baseline_columns() {
        assert_eq!(baseline_of("tern").as_deref(), Some("tern-base"));
        assert_eq!(
            baseline_of("tern batched").as_deref(),
            Some("tern-base batched")
        );
        assert_eq!(baseline_of("tern-base"), None);
        assert_eq!(baseline_of("mosquitto"), None);
        let brokers: Vec<String> = ["tern", "tern-base", "mosquitto"]
            .iter()
            .map(|b| b.to_string())
            .collect();
        let mut s = Section::new("pairs", "2. pairs", "50 pairs", &brokers);
        for (b, v) in [("tern", 300.0), ("tern-base", 200.0), ("mosquitto", 100.0)] {
            s.record("delivered", "msgs/s", Better::Higher, b, Some(v));
        }
        let md = s.markdown();
        // tern / mosquitto, then tern / tern-base; no tern-base / mosquitto.
        assert!(
            md.contains("| tern | tern-base | mosquitto | tern / mosquitto | tern / tern-base |\n"),
            "{md}"
        );
        assert!(
            md.contains("| delivered (msgs/s) | higher | 300 | 200 | 100 | 3.00x | 1.50x |"),
            "{md}"
        );
        let all = render(&Header::default(), &[s]);
        assert!(all.contains("`tern / tern-base` columns"), "{all}");
    }
}
