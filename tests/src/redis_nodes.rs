//! Redis servers of a test's own (and [`redis_cli`] for any), on free ports, killed when dropped: a master with a replica
//! and one Sentinel, for what only a replicated deployment does (`WAIT`), without touching the
//! shared clusters of `scripts/cluster` that other tests fail over.

use crate::harness::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `redis-cli -p <port> args…` on 127.0.0.1, its output trimmed (empty if it cannot run).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// One `redis-server` process (data node or Sentinel).
pub struct Node {
    pub port: u16,
    child: Child,
}

impl Node {
    /// `redis-server [conf]` on a free port with nothing kept on disk, plus `args` (a config
    /// file must come first on its command line).
    fn start(
        dir: &std::path::Path,
        conf: Option<&std::path::Path>,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = conf {
            cmd.arg(conf);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()?;
        let node = Self { port, child };
        node.wait_port(Duration::from_secs(10))?;
        Ok(node)
    }

    fn wait_port(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "nothing listens on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the process (SIGSTOP): it keeps its sockets and answers nothing.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// `redis-cli` on this node.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master, its replica and a Sentinel watching them (master name `wxpipe`).
pub struct Replicated {
    pub master: Node,
    pub replica: Node,
    pub sentinel: Node,
    dir: PathBuf,
}

impl Replicated {
    /// Starts the three and waits until the replica is in sync.
    pub fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "wxpipe-redis-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(dir.join("replica"))?;
        let master = Node::start(&dir, None, &[])?;
        let replica = Node::start(
            &dir.join("replica"),
            None,
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
        )?;
        let conf = dir.join("sentinel.conf");
        // Failover is not what these tests are about: the master is never declared down.
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor wxpipe 127.0.0.1 {} 1\nsentinel down-after-milliseconds wxpipe 600000\n",
                master.port
            ),
        )?;
        let sentinel_dir = dir.join("sentinel");
        std::fs::create_dir_all(&sentinel_dir)?;
        let sentinel = Node::start(&sentinel_dir, Some(&conf), &["--sentinel"])?;
        let r = Self {
            master,
            replica,
            sentinel,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !r
            .replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            anyhow::ensure!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }

    /// `WXPIPE_REDIS_URL` for this deployment.
    pub fn url(&self) -> String {
        format!("redis-sentinel://127.0.0.1:{}/wxpipe", self.sentinel.port)
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
