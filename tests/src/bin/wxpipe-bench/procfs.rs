//! What the benchmarks read about processes: CPU seconds, RSS, the broker's pid, and where the
//! binaries under test are.

use super::*;

/// `explicit`, else the binary `name` beside this one.
pub fn sibling_binary(explicit: Option<&PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name(name);
    if !sibling.exists() {
        bail!(
            "{} not found: run `cargo build --release` first, or pass --ingress-bin",
            sibling.display()
        );
    }
    Ok(sibling)
}

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
pub fn cpu_secs_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The local RabbitMQ's Erlang VM, if it runs on this machine.
pub fn broker_pid() -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-o", "beam.smp"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// (VmRSS, VmHWM) of a process in MB, from /proc.
pub fn rss_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The pid of the Redis server at `url`, as it reports itself (`INFO server`), when it runs on
/// this machine.
pub async fn redis_pid(url: &str) -> Option<u32> {
    let client = deadpool_redis::redis::Client::open(url).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = deadpool_redis::redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .ok()?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// CPU seconds of some named processes over a window of time: open it with [`CpuWindow::start`],
/// read it with [`CpuWindow::end`]. A process that is gone reads as 0 s.
pub struct CpuWindow {
    at_start: Vec<(&'static str, u32, f64)>,
    started: Instant,
}

impl CpuWindow {
    /// Starts the window over `procs` (a process without a pid is left out).
    pub fn start(procs: &[(&'static str, Option<u32>)]) -> Self {
        let at_start = procs
            .iter()
            .filter_map(|(name, pid)| pid.map(|p| (*name, p, cpu_secs_of(p))))
            .collect();
        Self {
            at_start,
            started: Instant::now(),
        }
    }

    /// The CPU each process used since the start (processes of one name summed).
    pub fn end(&self) -> CpuUse {
        let mut used = CpuUse {
            secs: self.started.elapsed().as_secs_f64(),
            by: Vec::new(),
        };
        for (name, pid, before) in &self.at_start {
            used.charge(name, (cpu_secs_of(*pid) - before).max(0.0));
        }
        used
    }
}

/// CPU seconds used by each named process over `secs` of wall time (summed over windows).
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub secs: f64,
    pub by: Vec<(&'static str, f64)>,
}

impl CpuUse {
    /// Adds another window of the same processes.
    pub fn add(&mut self, other: &CpuUse) {
        self.secs += other.secs;
        for (name, s) in &other.by {
            self.charge(name, *s);
        }
    }

    fn charge(&mut self, name: &'static str, secs: f64) {
        match self.by.iter_mut().find(|(n, _)| *n == name) {
            Some((_, mine)) => *mine += secs,
            None => self.by.push((name, secs)),
        }
    }

    /// `cpu_secs` over the window as a percentage of one core.
    fn pct(&self, cpu_secs: f64) -> f64 {
        cpu_secs / self.secs.max(1e-9) * 100.0
    }

    /// `cpu_secs` over the window as microseconds per item, at `rate` items/s.
    fn per_item(&self, cpu_secs: f64, rate: f64) -> f64 {
        cpu_secs / self.secs.max(1e-9) * 1e6 / rate.max(1e-9)
    }

    /// Microseconds of CPU per item of the processes named `name`, at `rate` items/s.
    pub fn us_of(&self, name: &str, rate: f64) -> Option<f64> {
        let (_, s) = self.by.iter().find(|(n, _)| *n == name)?;
        Some(self.per_item(*s, rate))
    }

    /// CPU seconds of every process together.
    pub fn total(&self) -> f64 {
        self.by.iter().map(|(_, s)| s).sum()
    }

    /// All the processes' CPU as a percentage of one core.
    pub fn busy_pct(&self) -> f64 {
        self.pct(self.total())
    }

    /// Microseconds of CPU per item, when `rate` items/s went through during the window.
    pub fn us_per(&self, rate: f64) -> f64 {
        self.per_item(self.total(), rate)
    }

    /// "ingress 48%, RabbitMQ 89%" (100% = one core).
    pub fn describe_pct(&self) -> String {
        let parts: Vec<String> = self
            .by
            .iter()
            .map(|(name, s)| format!("{name} {:.0}%", self.pct(*s)))
            .collect();
        parts.join(", ")
    }

    /// "broker 120 µs, ingress 40 µs, …; in all 250 µs (190 % of a core)" for `rate` items/s.
    pub fn describe_per(&self, rate: f64) -> String {
        let parts: Vec<String> = self
            .by
            .iter()
            .map(|(name, s)| format!("{name} {:.0} µs", self.per_item(*s, rate)))
            .collect();
        format!(
            "{}; in all {:.0} µs ({:.0}% of a core busy)",
            parts.join(", "),
            self.us_per(rate),
            self.busy_pct()
        )
    }
}

/// The CPU of a phase's rounds together, and the items that went through meanwhile.
#[derive(Default)]
pub struct Spent {
    cpu: CpuUse,
    items: f64,
}

impl Spent {
    /// Adds a round that ran at `rate` items/s.
    pub fn add(&mut self, rate: f64, cpu: &CpuUse) {
        self.items += rate * cpu.secs;
        self.cpu.add(cpu);
    }

    pub fn rate(&self) -> f64 {
        self.items / self.cpu.secs.max(1e-9)
    }

    pub fn us_per_item(&self) -> f64 {
        self.cpu.us_per(self.rate())
    }

    pub fn busy_pct(&self) -> f64 {
        self.cpu.busy_pct()
    }

    pub fn describe(&self) -> String {
        self.cpu.describe_per(self.rate())
    }

    pub fn describe_pct(&self) -> String {
        self.cpu.describe_pct()
    }

    /// What the CPU allows: where the cores are the limit of both phases, a pipeline can do at
    /// most the ceiling's CPU per item over its own of the ceiling's rate.
    pub fn bound(ceiling: &Spent, pipeline: &Spent) -> String {
        let (c, p) = (ceiling.us_per_item(), pipeline.us_per_item());
        format!(
            "CPU bound: the ceiling used {c:.0} µs of CPU per message ({:.0}% of a core busy), the pipeline {p:.0} µs per item ({:.0}%); were both bound by the cores, the ratio could not pass {c:.0} / {p:.0} = {:.2}",
            ceiling.busy_pct(),
            pipeline.busy_pct(),
            c / p.max(1e-9)
        )
    }
}
