//! The servers `weir bench` measures, each a process of its own started
//! here: `weir serve` (this binary, ephemeral, with the example plugins) and, with
//! `--against-fustor`, fustor-fusion 0.8.17 from a virtualenv made from
//! PyPI in the cache directory. Each runs in its own process group, so its
//! memory is read from `/proc` for the whole group and stopping it leaves
//! nothing behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The ingest key every server under test is given.
pub const INGEST_KEY: &str = "bench-ingest";
/// The query key every server under test is given.
pub const QUERY_KEY: &str = "bench-query";
/// The view (datastore) every server under test serves.
pub const VIEW: &str = "bench";
/// The fustor-fusion release compared against.
pub const FUSION_VERSION: &str = "0.8.17";

/// A server under test.
pub struct Server {
    /// `weir` or `fustor-fusion 0.8.17`.
    pub label: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Child,
    /// Where its output goes (shown when it fails to start).
    log: PathBuf,
}

impl Server {
    /// Starts `weir serve` from `weir` with a datastore sized for `files`
    /// and the example plugins.
    pub fn weir(weir: &Path, work: &Path, files: usize) -> anyhow::Result<Self> {
        let port = free_port()?;
        std::fs::create_dir_all(work)?;
        let plugins = Path::new(crate::EXAMPLE_PLUGIN_DIR);
        let config = work.join("weir.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nephemeral = true\nplugins = {plugins:?}\nplugin_poll_ms = 0\nlog = \"warn\"\n\n\
                 [[datastores]]\nname = \"{VIEW}\"\nsession_timeout_secs = 600\nqueue_rows = 1000000\n\
                 max_tree_items = {items}\nmax_tree_bytes = {bytes}\n\
                 keys = [{{ role = \"ingest\", key = \"{INGEST_KEY}\" }}, {{ role = \"query\", key = \"{QUERY_KEY}\" }}]\n",
                plugins = plugins.display().to_string(),
                items = files.saturating_mul(2).saturating_add(10_000),
                bytes = files.saturating_mul(1024).max(64 << 20),
            ),
        )?;
        let log = work.join("weir.log");
        let mut cmd = Command::new(weir);
        cmd.arg("serve").arg("--config").arg(&config);
        Self::spawn(
            format!("weir {}", env!("CARGO_PKG_VERSION")),
            port,
            cmd,
            log,
            work,
        )
    }

    /// Starts fustor-fusion from `bin` with one view sized for any tree.
    pub fn fusion(bin: &Path, work: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let home = work.join("fusion-home");
        std::fs::create_dir_all(home.join("fusion-config"))?;
        std::fs::write(
            home.join("fusion-config/default.yaml"),
            format!(
                "host: 127.0.0.1\nport: {port}\nlogging: WARNING\n\
                 receivers:\n  http-main:\n    driver: http\n    bind_host: 127.0.0.1\n    port: {port}\n    api_keys:\n      - {{key: {INGEST_KEY}, pipe_id: {VIEW}}}\n\
                 views:\n  {VIEW}:\n    driver: fs\n    api_keys: [{QUERY_KEY}]\n    driver_params:\n      max_tree_items: 0\n\
                 pipes:\n  {VIEW}:\n    receiver: http-main\n    views: [{VIEW}]\n    session_timeout_seconds: 600\n"
            ),
        )?;
        let log = work.join("fusion.log");
        let mut cmd = Command::new(bin);
        cmd.arg("start")
            .env("FUSTOR_HOME", &home)
            .env("NO_COLOR", "1");
        Self::spawn(
            format!("fustor-fusion {FUSION_VERSION}"),
            port,
            cmd,
            log,
            work,
        )
    }

    fn spawn(
        label: String,
        port: u16,
        mut cmd: Command,
        log: PathBuf,
        work: &Path,
    ) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {label}"))?;
        let mut server = Self {
            label,
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
        };
        server.wait_up()?;
        Ok(server)
    }

    /// Waits until `GET /` answers (both servers answer it).
    fn wait_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = self.base.trim_start_matches("http://").to_string();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it served: {}",
                    self.label,
                    self.log_tail()
                );
            }
            if let Ok(mut conn) = std::net::TcpStream::connect(&addr) {
                let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = std::io::Read::read_to_string(&mut conn, &mut answer);
                if answer.starts_with("HTTP/1.") && answer.contains(" 200 ") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not serve within 120 s: {}",
                    self.label,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Resident bytes of the server's processes now, and at their peak
    /// since [`Server::reset_peak`].
    pub fn memory(&self) -> (u64, u64) {
        let mut now = 0;
        let mut peak = 0;
        for pid in self.pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kib = |field: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            now += kib("VmRSS:");
            peak += kib("VmHWM:");
        }
        (now, peak)
    }

    /// Starts the peak of [`Server::memory`] over from now.
    pub fn reset_peak(&self) {
        for pid in self.pids() {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// The processes of the server's group.
    fn pids(&self) -> Vec<u32> {
        let group = self.child.id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![group];
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        // The fields after the command name (which may hold
                        // spaces): state, ppid, pgrp.
                        let rest = s.rsplit_once(") ")?.1.to_string();
                        rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                    })
                    == Some(group)
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM to the group, then SIGKILL to what is left.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `fustor-fusion` executable of a virtualenv in `cache`, made (with
/// `python3 -m venv` and pip, from PyPI) on first use.
pub fn fusion_bin(cache: &Path) -> anyhow::Result<PathBuf> {
    venv_bin(cache, "fustor-fusion", "fustor-fusion")
}

/// The executable `exe` of `package` [`FUSION_VERSION`] from PyPI, in a
/// virtualenv of its own in `cache`, made on first use with `python3 -m
/// venv` and pip.
pub fn venv_bin(cache: &Path, package: &str, exe: &str) -> anyhow::Result<PathBuf> {
    let venv = cache.join(format!("{package}-{FUSION_VERSION}"));
    let bin = venv.join("bin").join(exe);
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("cannot make the cache directory {}", cache.display()))?;
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .with_context(|| {
            format!("--against-fustor needs python3 (with venv) to install {package}")
        })?;
    anyhow::ensure!(made.success(), "python3 -m venv {} failed", venv.display());
    let installed = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            &format!("{package}=={FUSION_VERSION}"),
        ])
        .status()
        .context("pip did not run")?;
    anyhow::ensure!(
        installed.success() && bin.exists(),
        "pip install {package}=={FUSION_VERSION} into {} failed",
        venv.display()
    );
    Ok(bin)
}
