//! The Markdown report a scenario prints.

use std::fmt::Write as _;

use serde::Serialize;

use crate::provenance::{Built, Source};

/// A Markdown table.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        s.push_str(&line(&self.header));
        s.push_str(&format!(
            "|{}\n",
            self.header.iter().map(|_| "---|").collect::<String>()
        ));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

/// How a scenario's result stands against its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    Met,
    Missed,
    /// A figure with no target (startup time, say): reported, not judged.
    NoTarget,
}

impl Status {
    pub fn met_if(met: bool) -> Status {
        if met {
            Status::Met
        } else {
            Status::Missed
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Status::Met => "**met**",
            Status::Missed => "**missed**",
            Status::NoTarget => "no target",
        }
    }
}

/// One row of the verdict table: a target, what was measured against it, and the outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub status: Status,
}

/// A report: a title, the command, the machine, the source, then sections in order. The
/// [`Report::verdict`] rows and [`Report::highlight`] tables also go to BENCHMARKS.md; the raw
/// lines go to the scenario's JSON.
pub struct Report {
    pub title: String,
    pub command: String,
    pub machine: String,
    pub source: Source,
    pub finished: String,
    text: String,
    highlights: Vec<String>,
    verdicts: Vec<Verdict>,
    raw: Vec<String>,
    built: Vec<Built>,
    others_cpus: Vec<f64>,
}

impl Report {
    pub fn new(title: &str, command: &str) -> Report {
        let (built, others_cpus) = crate::provenance::scenario_record();
        Report {
            title: title.to_string(),
            command: command.to_string(),
            machine: crate::machine::one_line(),
            source: Source::capture(),
            finished: chrono_free_now(),
            text: String::new(),
            highlights: Vec::new(),
            verdicts: Vec::new(),
            raw: Vec::new(),
            built,
            others_cpus,
        }
    }

    pub fn heading(&mut self, h: &str) {
        let _ = writeln!(self.text, "### {h}\n");
    }

    pub fn para(&mut self, p: &str) {
        let _ = writeln!(self.text, "{p}\n");
    }

    pub fn table(&mut self, t: &Table) {
        let _ = writeln!(self.text, "{}", t.render());
    }

    /// A table under its own heading that BENCHMARKS.md also shows (the one place a scenario's
    /// own tables reach it; keep them few and short).
    pub fn highlight(&mut self, heading: &str, t: &Table) {
        self.table(t);
        self.highlights
            .push(format!("### {heading}\n\n{}", t.render()));
    }

    pub fn highlights(&self) -> &[String] {
        &self.highlights
    }

    /// The scenario's summary: a table under its own heading.
    pub fn summary_table(&mut self, heading: &str, t: &Table) {
        self.heading(heading);
        self.table(t);
    }

    /// A row of the verdict table (it also goes into this report as a line).
    pub fn verdict(&mut self, target: &str, measured: String, status: Status) {
        let _ = writeln!(
            self.text,
            "- Target: {target}. Measured: {measured}. Result: {}.\n",
            status.label()
        );
        self.verdicts.push(Verdict {
            target: target.to_string(),
            measured,
            status,
        });
    }

    /// Raw numbers, one record a line (`key=value ...`): a fenced block in this report when it is
    /// printed alone, and records in the scenario's JSON.
    pub fn raw(&mut self, lines: &[String]) {
        let _ = writeln!(self.text, "\u{0}RAW{}\n", self.raw.len());
        self.raw.push(lines.join("\n"));
    }

    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    pub fn built(&self) -> &[Built] {
        &self.built
    }

    /// The report in Markdown; the raw blocks inline, or replaced by a pointer to `json`.
    pub fn markdown(&self, json: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## {}\n", self.title);
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let _ = writeln!(out, "Machine: {}\n", self.machine);
        let _ = writeln!(out, "Source: {}, {}\n", self.source.line(), self.finished);
        let mut rest = self.text.as_str();
        while let Some(at) = rest.find("\u{0}RAW") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 4..];
            let end = after.find('\n').unwrap_or(after.len());
            let k: usize = after[..end].parse().unwrap_or(usize::MAX);
            match (json, self.raw.get(k)) {
                (None, Some(block)) => {
                    let _ = writeln!(out, "```text\n{block}\n```");
                }
                (Some(file), Some(_)) => {
                    let _ = writeln!(out, "(Raw numbers: `{file}`.)");
                }
                (_, None) => {}
            }
            rest = &after[end..];
        }
        out.push_str(rest);
        out
    }

    /// Everything in the report as JSON, the raw lines parsed into records.
    pub fn json(&self, scenario: &str, scenario_others_cpus: f64) -> serde_json::Value {
        let raw: Vec<serde_json::Value> = self
            .raw
            .iter()
            .flat_map(|block| block.lines().map(parse_raw_line).collect::<Vec<_>>())
            .collect();
        serde_json::json!({
            "scenario": scenario,
            "title": self.title,
            "command": self.command,
            "machine": self.machine,
            "source": self.source,
            "finished": self.finished,
            "others_cpus_over_scenario": finite(scenario_others_cpus),
            "others_cpus_per_run": self.others_cpus.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
            "built": self.built,
            "verdicts": self.verdicts,
            "raw": raw,
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.markdown(None))
    }
}

fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!((v * 1000.0).round() / 1000.0)
    } else {
        serde_json::Value::Null
    }
}

/// `run=1 mode=restarts rps=60026.34 exit="exit status: 0" pids=[1, 2]` as a JSON object;
/// a line of another shape as `{"line": "..."}`.
pub fn parse_raw_line(line: &str) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        let after = &rest[eq + 1..];
        let (value, len) = match after.chars().next() {
            Some('"') => match after[1..].find('"') {
                Some(end) => (serde_json::json!(&after[1..end + 1]), end + 2),
                None => break,
            },
            Some('[') => match after.find(']') {
                Some(end) => (serde_json::json!(&after[..=end]), end + 1),
                None => break,
            },
            _ => {
                let end = after.find(' ').unwrap_or(after.len());
                (scalar(&after[..end]), end)
            }
        };
        map.insert(key.to_string(), value);
        rest = after[len..].trim_start();
    }
    if rest.is_empty() && !map.is_empty() {
        serde_json::Value::Object(map)
    } else {
        serde_json::json!({ "line": line })
    }
}

fn scalar(v: &str) -> serde_json::Value {
    match v {
        "true" => serde_json::json!(true),
        "false" => serde_json::json!(false),
        "-" | "" => serde_json::Value::Null,
        _ => match (v.parse::<i64>(), v.parse::<f64>()) {
            (Ok(i), _) => serde_json::json!(i),
            (_, Ok(f)) if f.is_finite() => serde_json::json!(f),
            _ => serde_json::json!(v),
        },
    }
}

/// `yes` / `no`.
pub fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// What the "others' CPU" column means.
pub const OTHERS_NOTE: &str = "\"Others' CPU\": the average number of CPUs that processes \
    outside the harness (and what it started) used during the run, from /proc/stat minus the \
    harness's own rusage: on a shared machine, a high figure marks a run whose latencies and \
    throughput were squeezed by other work.";

/// The current UTC time as `2026-01-02 03:04 UTC`, without a date crate.
pub fn chrono_free_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    utc(secs)
}

fn utc(secs: i64) -> String {
    let ((y, m, d), rem) = civil(secs);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `((year, month, day), seconds into the day)` of a Unix time, UTC.
pub fn civil(secs: i64) -> ((i64, i64, i64), i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    ((y, m, d), rem)
}

/// The server log's WARN / ERROR lines of the runs that had any: `(label, lines)` per run, at
/// most 15 lines each.
pub fn log_problems(r: &mut Report, runs: &[(String, &[String])]) {
    if runs.iter().all(|(_, p)| p.is_empty()) {
        return;
    }
    r.heading("Server log: WARN / ERROR lines");
    let mut lines = Vec::new();
    for (label, problems) in runs.iter().filter(|(_, p)| !p.is_empty()) {
        lines.push(format!("# {label}: {} line(s)", problems.len()));
        lines.extend(problems.iter().take(15).cloned());
        if problems.len() > 15 {
            lines.push(format!("  … {} more", problems.len() - 15));
        }
    }
    r.raw(&lines);
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(1_795_527_328), "2026-11-24 13:35 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn raw_lines_become_records() {
        let v = super::parse_raw_line(
            "run=1 mode=restarts rps=60026.34 ok=true p999_us=- exit=\"exit status: 0\" pids=[1, 2]",
        );
        assert_eq!(v["run"], 1);
        assert_eq!(v["mode"], "restarts");
        assert_eq!(v["rps"], 60026.34);
        assert_eq!(v["ok"], true);
        assert!(v["p999_us"].is_null());
        assert_eq!(v["exit"], "exit status: 0");
        assert_eq!(v["pids"], "[1, 2]");
        let free = super::parse_raw_line("  master pid: exited early");
        assert_eq!(free["line"], "  master pid: exited early");
        let half = super::parse_raw_line("a=1 then prose");
        assert_eq!(half["line"], "a=1 then prose");
    }
}
