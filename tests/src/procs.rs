//! Processes the fault tests control: a private PostgreSQL cluster (initdb on a free
//! port, never the machine's shared one) and the `ledger` binary itself.

use std::path::PathBuf;
use std::process::Stdio;

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn pg_bin(tool: &str) -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL is installed");
    let mut dirs: Vec<PathBuf> = versions.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    dirs.last().expect("a PostgreSQL version").join("bin").join(tool)
}

fn as_postgres(tool: &str) -> std::process::Command {
    // initdb and postgres refuse to run as root; the tests run as root here.
    let mut c = std::process::Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
    c
}

/// A private PostgreSQL cluster in a temporary directory.
pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    /// The small tmpfs its WAL lives on, if it was started with one.
    wal_mount: Option<PathBuf>,
    /// Extra server settings (`-c name=value`).
    settings: String,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        PgCluster::init(None)
    }

    /// A cluster whose WAL (1 MB segments, no checkpoint by size or time) is on a tmpfs of
    /// `megabytes` of its own, which [`PgCluster::fill_wal_disk`] fills and
    /// [`PgCluster::free_wal_disk`] frees: Postgres out of disk space for its WAL.
    pub fn start_with_wal_disk(megabytes: u32) -> PgCluster {
        PgCluster::init(Some(megabytes))
    }

    fn init(wal_megabytes: Option<u32>) -> PgCluster {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ledger-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let wal_mount = wal_megabytes.map(|mb| {
            let mount = dir.join("wal-disk");
            std::fs::create_dir_all(&mount).expect("mount point");
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                .arg(&mount)
                .status();
            assert!(mounted.is_ok_and(|s| s.success()), "mount a tmpfs for the WAL (the tests run as root)");
            mount
        });
        // Unmounted however the set-up below ends (a panic before the cluster exists
        // would otherwise leave the tmpfs, and its memory, behind).
        let mut unmount = Unmount(wal_mount.clone());
        let chown = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown the cluster directory");
        let mut init = as_postgres("initdb");
        init.args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(dir.join("data"));
        if let Some(mount) = &wal_mount {
            init.arg("--waldir").arg(mount.join("pg_wal")).arg("--wal-segsize=1");
        }
        let init = init.stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(init.is_ok_and(|s| s.success()), "initdb");
        // No checkpoint while the test runs: the WAL grows into new segments (a
        // checkpoint would recycle old ones in place, needing no more room).
        // and no segment is recycled: whatever room Postgres frees is not reused.
        let settings = if wal_mount.is_some() {
            " -c max_wal_size=1GB -c min_wal_size=2MB -c checkpoint_timeout=1h -c wal_recycle=off".to_owned()
        } else {
            String::new()
        };
        unmount.0 = None;
        let cluster = PgCluster { port, dir, wal_mount, settings };
        cluster.resume();
        cluster
    }

    /// Fills the WAL's disk to the last byte (a file of zeros, written until the disk
    /// refuses; called again, it takes whatever room was freed since); returns the
    /// bytes written.
    pub fn fill_wal_disk(&self) -> u64 {
        use std::io::Write;
        let mount = self.wal_mount.as_ref().expect("a cluster started with a WAL disk");
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(mount.join("filler")).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        // Bounded: the disk is a few megabytes.
        for _ in 0..100_000 {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = file.flush();
        written
    }

    /// Postgres out of room for its WAL for `held` (a fault's duration): the disk filled,
    /// filled again every 100 ms (whatever room Postgres frees is taken), then freed.
    /// Returns the bytes written.
    pub async fn hold_wal_disk_full(&self, held: std::time::Duration) -> u64 {
        let started = std::time::Instant::now();
        let mut filled = self.fill_wal_disk();
        while started.elapsed() < held {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            filled += self.fill_wal_disk();
        }
        self.free_wal_disk();
        filled
    }

    /// A supervisor: starts the server again if it gave up, until it accepts
    /// connections (bounded: 30 s of 500 ms looks). Returns whether it had to.
    pub async fn supervise(&self) -> bool {
        let mut restarted = false;
        for _ in 0..60 {
            if self.is_up() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            restarted |= self.ensure_running();
        }
        restarted
    }

    /// Frees what [`PgCluster::fill_wal_disk`] took.
    pub fn free_wal_disk(&self) {
        let mount = self.wal_mount.as_ref().expect("a cluster started with a WAL disk");
        std::fs::remove_file(mount.join("filler")).expect("filler removed");
    }

    /// Starts the server if its postmaster is gone (as a supervisor would after it gave
    /// up: a startup that could not write its WAL aborts); leaves a running one alone.
    /// Returns whether it had to start it.
    pub fn ensure_running(&self) -> bool {
        let running = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !running {
            self.resume();
        }
        !running
    }

    /// Whether the server's log holds `text`.
    pub fn log_contains(&self, text: &str) -> bool {
        std::fs::read_to_string(self.dir.join("log")).is_ok_and(|log| log.contains(text))
    }

    /// Whether the server accepts connections now.
    pub fn is_up(&self) -> bool {
        std::process::Command::new(pg_bin("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "2"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A streaming replica of `primary`: `pg_basebackup -R` of the running primary into
    /// a directory of its own, started on another free port (hot standby, read-only).
    pub fn replica_of(primary: &PgCluster) -> PgCluster {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ledger-pg-replica-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let chown = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown the replica directory");
        let backup = as_postgres("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-R", "-X", "stream", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(backup.is_ok_and(|s| s.success()), "pg_basebackup of the primary");
        let replica = PgCluster { port, dir, wal_mount: None, settings: String::new() };
        replica.resume();
        replica
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off{}",
            self.port,
            self.dir.display(),
            self.settings
        );
        let ok = as_postgres("pg_ctl")
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("start")
            .stdout(Stdio::null())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "pg_ctl start");
    }

    /// Stops the server the hard way (as a crash would).
    pub fn crash(&self) {
        let _ = as_postgres("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.crash();
        drop(Unmount(self.wal_mount.take()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unmounts a tmpfs when dropped (lazily if it is still busy), so the directory removed
/// after never reaches into it.
struct Unmount(Option<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(mount) = self.0.take() {
            let done = std::process::Command::new("umount").arg(&mount).status().is_ok_and(|s| s.success());
            if !done {
                let _ = std::process::Command::new("umount").arg("-l").arg(&mount).status();
            }
        }
    }
}

/// The `ledger` binary built by `scripts/test` before the test run (or `LEDGER_BIN`).
pub fn ledger_bin() -> PathBuf {
    let path = std::env::var("LEDGER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ledger"));
    assert!(path.exists(), "{} is missing: run `cargo build --bin ledger` first (scripts/test does)", path.display());
    path
}

/// The environment of a `ledger` process on `config`'s database and NATS prefix, with
/// the test admin token, a provider nothing listens on and no scheduled reconciliation.
pub fn base_env(config: &ledger_infrastructure::Config) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", config.database_url.clone()),
        ("LEDGER_NATS_PREFIX", config.nats_prefix.clone()),
        ("LEDGER_ADMIN_TOKEN", crate::ADMIN_TOKEN.to_owned()),
        ("LEDGER_PROVIDER_URL", "http://127.0.0.1:9".to_owned()),
        ("LEDGER_RECONCILE_INTERVAL_S", "0".to_owned()),
    ]
}

/// A `ledger` process (`serve`, `api` or `worker`) that can be killed and restarted.
pub struct LedgerProcess {
    pub child: tokio::process::Child,
    pub base: String,
    mode: String,
    env: Vec<(String, String)>,
    http_port: Option<u16>,
    /// Where the process's log (stderr) goes, if anywhere.
    log: Option<PathBuf>,
}

impl LedgerProcess {
    /// Starts `ledger serve` and waits (bounded) until it answers `/health/live`.
    pub async fn start(env: &[(&str, String)], http_port: u16) -> LedgerProcess {
        LedgerProcess::start_mode("serve", env, Some(http_port)).await
    }

    /// Starts `ledger MODE`; one with an HTTP port is waited for until it answers.
    pub async fn start_mode(mode: &str, env: &[(&str, String)], http_port: Option<u16>) -> LedgerProcess {
        LedgerProcess::start_logged(mode, env, http_port, None).await
    }

    /// Like [`LedgerProcess::start_mode`], appending the process's log (stderr, JSON
    /// lines at the default level unless `RUST_LOG` is in `env`) to `log`.
    pub async fn start_logged(
        mode: &str,
        env: &[(&str, String)],
        http_port: Option<u16>,
        log: Option<PathBuf>,
    ) -> LedgerProcess {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let child = LedgerProcess::spawn(mode, &env, http_port, log.as_ref());
        let base = http_port.map(|p| format!("http://127.0.0.1:{p}")).unwrap_or_default();
        let process = LedgerProcess { child, base, mode: mode.to_owned(), env, http_port, log };
        process.wait_live().await;
        process
    }

    fn spawn(
        mode: &str,
        env: &Vec<(String, String)>,
        http_port: Option<u16>,
        log: Option<&PathBuf>,
    ) -> tokio::process::Child {
        let mut command = tokio::process::Command::new(ledger_bin());
        command.arg(mode);
        if log.is_none() {
            command.env("RUST_LOG", "warn");
        } else {
            command.env_remove("RUST_LOG");
        }
        if let Some(port) = http_port {
            command.env("LEDGER_HTTP_ADDR", format!("127.0.0.1:{port}"));
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let stderr = match log {
            None => Stdio::null(),
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .expect("the log file opens"),
        };
        command.stdout(Stdio::null()).stderr(stderr).kill_on_drop(true).spawn().expect("ledger starts")
    }

    async fn wait_live(&self) {
        if self.http_port.is_none() {
            return;
        }
        let client = reqwest::Client::new();
        let url = format!("{}/health/live", self.base);
        crate::eventually("ledger answers /health/live", 60, || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.is_ok() }
        })
        .await;
    }

    /// Sends a signal to the process (`"TERM"`, `"KILL"`).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        }
    }

    /// `kill -9`, reaped.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the same process again (same mode, environment and port).
    pub async fn restart(&mut self) {
        self.kill9().await;
        self.child = LedgerProcess::spawn(&self.mode, &self.env, self.http_port, self.log.as_ref());
        self.wait_live().await;
    }
}

/// Three nats-server processes with JetStream, clustered over loopback routes.
pub struct NatsCluster {
    pub ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    dirs: Vec<PathBuf>,
    children: Vec<Option<tokio::process::Child>>,
}

impl NatsCluster {
    pub async fn start(nodes: usize) -> NatsCluster {
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let dirs = (0..nodes)
            .map(|i| std::env::temp_dir().join(format!("ledger-natsc-{i}-{}", uuid::Uuid::new_v4().simple())))
            .collect();
        let mut cluster = NatsCluster { ports, cluster_ports, dirs, children: (0..nodes).map(|_| None).collect() };
        for i in 0..nodes {
            cluster.resume(i).await;
        }
        cluster
    }

    /// `nats://…` of every node, comma-separated (for `NATS_URL`).
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    pub async fn resume(&mut self, i: usize) {
        let routes: Vec<String> = self
            .cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.ports[i].to_string(), "-js", "-n", &format!("node{i}")])
            .arg("-sd")
            .arg(&self.dirs[i])
            .args([
                "--cluster_name",
                "ledger-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_ports[i]),
            ])
            .args(["--routes", &routes.join(",")])
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server installed");
        self.children[i] = Some(child);
        let port = self.ports[i];
        crate::eventually("nats node accepts connections", 10, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }

    /// `kill -9` one node.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.start_kill();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
