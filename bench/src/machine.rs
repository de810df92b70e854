//! What machine the figures come from.

use std::process::Command;

fn first_line(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        }
        Err(_) => "?".into(),
    }
}

fn memory() -> String {
    // `free -h`'s "Mem:" total, without depending on its column layout.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB RAM", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "? RAM".into())
}

/// `2 CPUs (nproc), 23.4 GiB RAM, Linux 6.1.0, rustc 1.95.0 (…), wrk 4.1.0 …`
pub fn one_line() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    format!(
        "{cpus} CPUs (nproc; {model}), {}, Linux {}, {}, {}",
        memory(),
        first_line("uname", &["-r"]),
        first_line(&rustc, &["-V"]),
        crate::wrk::version()
    )
}

/// The 1-minute load average, from /proc/loadavg: the machine may be shared, and a busy one
/// explains a slow run.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU used on the whole machine and by the harness with everything it started, between
/// [`CpuWindow::start`] and [`CpuWindow::finish`]: the difference is what other processes took,
/// which tells a quiet run from one that shared the machine.
pub struct CpuWindow {
    busy: f64,
    ours: f64,
    at: std::time::Instant,
}

/// Busy CPU seconds of the whole machine since boot, from /proc/stat.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let busy: f64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / if hz > 0.0 { hz } else { 100.0 }
}

/// CPU seconds of this process plus every descendant it has reaped (wrk, the server's master,
/// and through the master, its workers).
fn our_cpu_secs() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            for tv in [ru.ru_utime, ru.ru_stime] {
                total += tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
            }
        }
    }
    total
}

impl CpuWindow {
    pub fn start() -> CpuWindow {
        CpuWindow {
            busy: machine_busy_secs(),
            ours: our_cpu_secs(),
            at: std::time::Instant::now(),
        }
    }

    /// Average CPUs used by other processes over the window; call it once everything the
    /// window started has been reaped.
    pub fn others_cpus(&self) -> f64 {
        let cpus = self.others_cpus_unrecorded();
        crate::provenance::record_others_cpus(cpus);
        cpus
    }

    /// The same figure, not recorded as one of the scenario's runs: the whole scenario's.
    pub fn others_cpus_unrecorded(&self) -> f64 {
        let busy = machine_busy_secs() - self.busy;
        let ours = our_cpu_secs() - self.ours;
        let secs = self.at.elapsed().as_secs_f64();
        if secs > 0.0 {
            ((busy - ours) / secs).max(0.0)
        } else {
            f64::NAN
        }
    }
}
