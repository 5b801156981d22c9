//! An outside client: a Python package generated from the served `/openapi.json` by
//! `openapi-python-client` (installed by `scripts/test`), driven by
//! `tests/python/smoke.py` against the real service through the generated models.

use ledger_tests::{ADMIN_TOKEN, TestApp};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// The generator may take a while on a cold machine; the smoke run much less.
const GENERATE_TIMEOUT: Duration = Duration::from_secs(180);
const SMOKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a command to its end within `limit`, failing the test with its output otherwise.
async fn run(mut command: Command, what: &str, limit: Duration) {
    command.kill_on_drop(true);
    let output = match tokio::time::timeout(limit, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!(
            "{what} could not start: {e}. `scripts/test` installs openapi-python-client \
             (python3 -m pip install openapi-python-client)"
        ),
        Err(_) => panic!("{what} took longer than {limit:?}"),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_generated_python_client_opens_deposits_transfers_and_reads() {
    let app = TestApp::spawn().await;
    let document = app.client.get(format!("{}/openapi.json", app.base)).send().await.expect("served");
    let document = document.bytes().await.expect("the document");
    let dir = TempDir(std::env::temp_dir().join(format!("ledger-python-client-{}", uuid::Uuid::new_v4().simple())));
    std::fs::create_dir_all(&dir.0).expect("a temporary directory");
    let spec = dir.0.join("openapi.json");
    std::fs::write(&spec, &document).expect("the document written");

    let package = dir.0.join("ledger_http_client");
    let mut generate = Command::new("openapi-python-client");
    generate.arg("generate").arg("--path").arg(&spec).arg("--output-path").arg(&package).args(["--meta", "none"]);
    run(generate, "openapi-python-client generate", GENERATE_TIMEOUT).await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/smoke.py");
    // Once against `default` (unprefixed routes), once against a ledger it creates.
    for ledger in [None, Some("py-ledger")] {
        let mut smoke = Command::new("python3");
        smoke
            .arg(&script)
            .env("PYTHONPATH", &dir.0)
            .env("LEDGER_URL", &app.base)
            .env("LEDGER_TOKEN", ADMIN_TOKEN)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(name) = ledger {
            smoke.env("LEDGER_LEDGER", name);
        }
        run(smoke, &format!("the Python smoke test in {}", ledger.unwrap_or("default")), SMOKE_TIMEOUT).await;
    }
    app.assert_read_models_match_log().await;
}
