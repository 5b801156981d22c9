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
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ledger-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let chown = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown the cluster directory");
        let init = as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(init.is_ok_and(|s| s.success()), "initdb");
        let cluster = PgCluster { port, dir };
        cluster.resume();
        cluster
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", self.port, self.dir.display());
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
        let _ = std::fs::remove_dir_all(&self.dir);
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

/// A `ledger serve` process with the given environment.
pub struct LedgerProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

impl LedgerProcess {
    /// Starts `ledger serve` and waits (bounded) until it answers `/health/live`.
    pub async fn start(env: &[(&str, String)], http_port: u16) -> LedgerProcess {
        let mut command = tokio::process::Command::new(ledger_bin());
        command.arg("serve").env("LEDGER_HTTP_ADDR", format!("127.0.0.1:{http_port}")).env("RUST_LOG", "warn");
        for (k, v) in env {
            command.env(k, v);
        }
        let child =
            command.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true).spawn().expect("ledger starts");
        let base = format!("http://127.0.0.1:{http_port}");
        let client = reqwest::Client::new();
        let url = format!("{base}/health/live");
        crate::eventually("ledger answers /health/live", 60, || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.is_ok() }
        })
        .await;
        LedgerProcess { child, base }
    }

    /// Sends a signal to the process (`"TERM"`, `"KILL"`).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        }
    }
}
