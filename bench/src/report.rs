//! The Markdown report a scenario prints.

use std::fmt::Write as _;

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

/// A report: a title, the command, the machine, then sections in order.
pub struct Report {
    text: String,
}

impl Report {
    pub fn new(title: &str, command: &str) -> Report {
        let mut text = String::new();
        let _ = writeln!(text, "## {title}\n");
        let _ = writeln!(text, "Command: `{command}`\n");
        let _ = writeln!(text, "Machine: {}\n", crate::machine::one_line());
        let _ = writeln!(
            text,
            "Source: {}, {}\n",
            crate::builds::source_line(),
            chrono_free_now()
        );
        Report { text }
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

    /// A fenced block of raw numbers.
    pub fn raw(&mut self, lines: &[String]) {
        let _ = writeln!(self.text, "```text\n{}\n```\n", lines.join("\n"));
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
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
fn chrono_free_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    utc(secs)
}

fn utc(secs: i64) -> String {
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
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(1_795_527_328), "2026-11-24 13:35 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
    }
}
