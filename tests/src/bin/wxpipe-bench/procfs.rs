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
