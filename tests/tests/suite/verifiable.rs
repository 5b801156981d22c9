//! The verifiable log (issue 30; API.md v1.2 "Verifiable log"): signed tree heads,
//! inclusion and consistency proofs from the service, checked with the RFC 9162
//! verification algorithms and the public key alone; hostile parameters; tampering.

use ledger_infrastructure::merkle::{self, Hash};
use ledger_tests::{TestApp, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn hash(hex_text: &Value) -> Hash {
    let bytes = hex::decode(hex_text.as_str().expect("hex")).expect("hex");
    bytes.as_slice().try_into().expect("32 bytes")
}

fn hashes(list: &Value) -> Vec<Hash> {
    list.as_array().expect("a list").iter().map(hash).collect()
}

/// Every event of the log, as `/v1/events` shows it.
async fn events(app: &TestApp) -> Vec<Value> {
    let page = app.get("/v1/events?limit=1000").await;
    assert_eq!(page.status, StatusCode::OK);
    page.body["events"].as_array().expect("events").clone()
}

/// Some history: accounts, deposits, transfers.
async fn history(app: &TestApp, transfers: usize) {
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 10_000, "EUR").await;
    for i in 0..transfers {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let r = app.transfer(from, to, 1, "EUR").await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_heads_and_proofs_verify_with_the_public_key_alone() {
    let app = TestApp::spawn().await;
    history(&app, 30).await;
    let log = events(&app).await;
    let n = log.len() as i64;
    // The keys need no token.
    let keys: Value =
        reqwest::get(format!("{}/v1/audit/keys", app.base)).await.expect("keys").json().await.expect("json");
    let key = &keys["keys"][0];
    assert_eq!(
        (key["algorithm"].as_str(), key["key_id"].as_str().map(str::len)),
        (Some("ed25519"), Some(16)),
        "{keys}"
    );
    let public = key["public_key"].as_str().expect("public key").to_owned();
    // The leaves, from the events' hashes alone.
    let leaves: Vec<Hash> = log
        .iter()
        .map(|e| {
            let h = hash(&e["hash"]);
            merkle::leaf_hash(&h)
        })
        .collect();
    let (nodes, _) = merkle::grow(Vec::new(), 0, &leaves);
    let mut known = merkle::Known { nodes: nodes.into_iter().collect(), missing: None };
    let mut roots = vec![merkle::empty_root()];
    for size in 1..=n {
        let head = app.get(&format!("/v1/audit/tree-head?tree_size={size}")).await;
        assert_eq!(head.status, StatusCode::OK, "{head:?}");
        let b = &head.body;
        let root = hash(&b["root_hash"]);
        assert_eq!(root, merkle::root(size as u64, &mut known), "the root of {size} from the events' hashes");
        assert_eq!(
            (b["ledger"].as_str(), b["tree_size"].as_i64(), b["key_id"].clone()),
            (Some("default"), Some(size), key["key_id"].clone())
        );
        let ok = ledger_infrastructure::signing::verify_head(
            &public,
            "default",
            size,
            b["root_hash"].as_str().expect("root"),
            b["timestamp"].as_str().expect("timestamp"),
            b["signature"].as_str().expect("signature"),
        );
        assert!(ok, "the signature of the head at {size} verifies with the public key");
        roots.push(root);
    }
    let default_head = app.get("/v1/audit/tree-head").await;
    assert_eq!(default_head.body["tree_size"], json!(n), "the default size is the head");
    for size in [1, 2, 3, 7, 8, 9, n / 2, n - 1, n] {
        for position in 1..=size {
            let p = app.get(&format!("/v1/audit/proofs/inclusion?position={position}&tree_size={size}")).await;
            assert_eq!(p.status, StatusCode::OK, "{p:?}");
            let leaf = hash(&p.body["leaf_hash"]);
            assert_eq!(leaf, leaves[position as usize - 1], "the leaf of {position}");
            let path = hashes(&p.body["audit_path"]);
            assert!(merkle::verify_inclusion(position as u64 - 1, size as u64, &leaf, &path, &roots[size as usize]));
        }
    }
    for from in 1..=n {
        for to in [from, from + 1, (from + n) / 2, n].into_iter().filter(|t| *t >= from && *t <= n) {
            let p = app.get(&format!("/v1/audit/proofs/consistency?from_size={from}&to_size={to}")).await;
            assert_eq!(p.status, StatusCode::OK, "{p:?}");
            let proof = hashes(&p.body["proof"]);
            assert!(
                merkle::verify_consistency(from as u64, to as u64, &roots[from as usize], &roots[to as usize], &proof),
                "consistency {from} -> {to}"
            );
        }
    }
}

/// What an auditor saved is checked offline by the binary alone: no configuration, no
/// database, no network; a forged head or a head of a rewritten log is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_heads_and_proofs_are_checked_offline_by_the_binary() {
    let app = TestApp::spawn().await;
    history(&app, 5).await;
    let dir = std::env::temp_dir().join(format!("ledger-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let save = |name: &str, v: &Value| {
        let path = dir.join(name);
        std::fs::write(&path, v.to_string()).expect("saved");
        path
    };
    let keys: Value =
        reqwest::get(format!("{}/v1/audit/keys", app.base)).await.expect("keys").json().await.expect("json");
    let first = app.get("/v1/audit/tree-head").await.body;
    let old = first["tree_size"].as_i64().expect("size");
    history(&app, 5).await;
    let second = app.get("/v1/audit/tree-head").await.body;
    let new = second["tree_size"].as_i64().expect("size");
    let consistency = app.get(&format!("/v1/audit/proofs/consistency?from_size={old}&to_size={new}")).await.body;
    let event = events(&app).await.into_iter().find(|e| e["position"] == json!(3)).expect("event 3");
    let inclusion = app.get(&format!("/v1/audit/proofs/inclusion?position=3&tree_size={new}")).await.body;
    let files = [
        save("keys.json", &keys),
        save("head-1.json", &first),
        save("head-2.json", &second),
        save("consistency.json", &consistency),
        save("event.json", &event),
        save("inclusion.json", &inclusion),
    ];
    let arg = |i: usize| files[i].to_string_lossy().into_owned();
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(ledger_tests::procs::ledger_bin())
            .args(args)
            .env_clear()
            .output()
            .expect("the binary runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let consistent = ["audit", "check-consistency", "--keys"].map(String::from).to_vec();
    let (ok, said) = run([
        consistent.clone(),
        vec![arg(0), "--from".into(), arg(1), "--to".into(), arg(2), "--proof".into(), arg(3)],
    ]
    .concat());
    assert!(ok, "{said}");
    let inclusion_args = ["audit", "check-inclusion", "--keys"].map(String::from).to_vec();
    let (ok, said) = run([
        inclusion_args,
        vec![arg(0), "--head".into(), arg(2), "--proof".into(), arg(5), "--event".into(), arg(4)],
    ]
    .concat());
    assert!(ok, "{said}");
    // A head whose root was changed (a rewritten log, or a forgery) is refused.
    let mut forged = second.clone();
    forged["root_hash"] = json!(hex::encode([7u8; 32]));
    let forged_path = save("forged.json", &forged);
    let (ok, said) = run([
        consistent,
        vec![
            arg(0),
            "--from".into(),
            arg(1),
            "--to".into(),
            forged_path.to_string_lossy().into_owned(),
            "--proof".into(),
            arg(3),
        ],
    ]
    .concat());
    assert!(!ok && said.contains("signature"), "{said}");
    let mut other_event = event.clone();
    other_event["hash"] = json!(hex::encode([1u8; 32]));
    let check = ledger_api::run::cli::offline::check_inclusion;
    assert!(check(&keys, &second, &inclusion, &other_event, None).is_err());
    assert!(check(&keys, &second, &inclusion, &event, Some("default")).is_ok());
    // A head of another ledger signed with the same key, or naming a key whose id is
    // not its own, is refused.
    assert!(check(&keys, &second, &inclusion, &event, Some("books")).is_err());
    let mut renamed = keys.clone();
    renamed["keys"][0]["key_id"] = json!("0000000000000000");
    let mut misnamed = second.clone();
    misnamed["key_id"] = json!("0000000000000000");
    assert!(check(&renamed, &misnamed, &inclusion, &event, None).is_err());
    // `ledger audit prove` writes the same files from the database, signed with the
    // deployment's key, and checks them; the offline check accepts what it wrote.
    let proved = dir.join("proved");
    let out = std::process::Command::new(ledger_tests::procs::ledger_bin())
        .args(["audit", "prove", "--position", "3", "--tree-size", &new.to_string(), "--out"])
        .arg(&proved)
        .env_clear()
        .envs(ledger_tests::procs::base_env(&app.state.config))
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(proved.join(name)).expect("written")).expect("json")
    };
    assert_eq!(read("head.json"), second, "the head the API signed at that size");
    assert_eq!(read("proof.json"), inclusion);
    assert_eq!(read("event.json")["hash"], event["hash"]);
    assert_eq!(read("keys.json"), keys);
    let (ok, said) = run([
        ["audit", "check-inclusion", "--keys"].map(String::from).to_vec(),
        vec![
            proved.join("keys.json").to_string_lossy().into_owned(),
            "--head".into(),
            proved.join("head.json").to_string_lossy().into_owned(),
            "--proof".into(),
            proved.join("proof.json").to_string_lossy().into_owned(),
            "--event".into(),
            proved.join("event.json").to_string_lossy().into_owned(),
        ],
    ]
    .concat());
    assert!(ok, "{said}");
    for bad in [["--position", "0"], ["--position", "999999"]] {
        let out = std::process::Command::new(ledger_tests::procs::ledger_bin())
            .args(["audit", "prove"])
            .args(bad)
            .arg("--out")
            .arg(&proved)
            .env_clear()
            .envs(ledger_tests::procs::base_env(&app.state.config))
            .output()
            .expect("the binary runs");
        assert!(!out.status.success(), "{bad:?} was proved");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_parameters_out_of_range_are_refused_without_a_walk() {
    let app = TestApp::spawn().await;
    history(&app, 3).await;
    let head = app.state.store.head().await.expect("head");
    let beyond = head + 1;
    for path in [
        "/v1/audit/tree-head?tree_size=-1".to_owned(),
        "/v1/audit/tree-head?tree_size=abc".to_owned(),
        "/v1/audit/tree-head?tree_size=1e3".to_owned(),
        "/v1/audit/tree-head?tree_size=99999999999999999999999".to_owned(),
        format!("/v1/audit/tree-head?tree_size={beyond}"),
        "/v1/audit/proofs/inclusion".to_owned(),
        "/v1/audit/proofs/inclusion?position=0".to_owned(),
        format!("/v1/audit/proofs/inclusion?position={beyond}"),
        "/v1/audit/proofs/inclusion?position=3&tree_size=2".to_owned(),
        "/v1/audit/proofs/inclusion?position=+1".to_owned(),
        "/v1/audit/proofs/consistency?from_size=0&to_size=2".to_owned(),
        "/v1/audit/proofs/consistency?from_size=3&to_size=2".to_owned(),
        format!("/v1/audit/proofs/consistency?from_size=1&to_size={beyond}"),
        "/v1/audit/proofs/consistency?from_size=1".to_owned(),
        "/v1/audit/proofs/consistency?from_size=9223372036854775807&to_size=9223372036854775807".to_owned(),
    ] {
        let r = app.get(&path).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{path}: {r:?}");
    }
    let r = app.get("/v1/audit/tree-head?tree_size=0").await;
    assert_eq!(
        (r.status, r.body["root_hash"].clone()),
        (StatusCode::OK, json!(hex::encode(merkle::empty_root()))),
        "{r:?}"
    );
    // A token is needed for everything but the keys.
    let anonymous = reqwest::get(format!("{}/v1/audit/tree-head", app.base)).await.expect("sent");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// A request for a size the tree has not reached wakes the process's worker: with a
/// poll of a minute, a head and a proof at the log's head are answered within the
/// consistency wait (2 s), where the poll alone would leave both 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_the_head_grows_the_tree_at_once() {
    use ledger_infrastructure::tree;
    // The API alone, the tree grown to the log's head by the test, then this
    // process's worker started: its first step finds the head, reports it (which shows
    // it ran) and sleeps for its poll, with no step in flight.
    let app = TestApp::spawn_mode(test_config(), ledger_api::run::serve::Mode::Api).await;
    history(&app, 1).await;
    while let tree::Grown::To(_) = tree::grow(&app.pool, tree::BATCH).await.expect("grows") {}
    let grown = tree::size(&app.pool).await.expect("size");
    assert!(grown > 0 && grown == app.state.store.head().await.expect("head"), "the tree is at the head");
    let stop = tokio_util::sync::CancellationToken::new();
    let poll = std::time::Duration::from_secs(60);
    let limit = app.state.config.db_statement_timeout;
    let worker = tokio::spawn(tree::run(app.pool.clone(), poll, limit, app.state.tree.clone(), stop.clone()));
    ledger_tests::eventually("the worker's first step reports the head it found", 10, || async {
        app.state.tree.last_known().size == grown
    })
    .await;
    // Events the sleeping worker has not grown the tree over.
    history(&app, 2).await;
    let head = app.state.store.head().await.expect("head");
    assert!(tree::size(&app.pool).await.expect("size") < head, "the worker sleeps for its poll");
    let r = app.get("/v1/audit/tree-head").await;
    assert_eq!((r.status, r.body["tree_size"].as_i64()), (StatusCode::OK, Some(head)), "{r:?}");
    let r = app.get(&format!("/v1/audit/proofs/inclusion?position={head}")).await;
    assert_eq!((r.status, r.body["tree_size"].as_i64()), (StatusCode::OK, Some(head)), "{r:?}");
    stop.cancel();
    worker.await.expect("the worker stops");
}

/// A superuser edits stored events. `/v1/audit/verify` names the position; the tree
/// never grows over an event that does not recompute; and an event whose stored hash
/// was changed after it entered the tree no longer proves its inclusion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_stops_the_tree_and_breaks_proofs_naming_the_position() {
    use ledger_infrastructure::tree::{self, Grown, TreeError};
    // The API only: the test grows the tree itself.
    let app = TestApp::spawn_mode(test_config(), ledger_api::run::serve::Mode::Api).await;
    // More than a block of 16 events, so the first block's subtree is stored.
    history(&app, 20).await;
    let grown = tree::grow(&app.pool, tree::BATCH).await.expect("grows");
    let size = app.state.store.head().await.expect("head");
    assert_eq!(grown, Grown::To(size));
    let signed = app.get(&format!("/v1/audit/tree-head?tree_size={size}")).await.body;
    // More events, then one of them edited before the tree reached it.
    history(&app, 4).await;
    let bad: i64 = size + 3;
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query("alter table events disable trigger events_append_only").execute(&mut *tx).await.expect("disable");
    sqlx::query("update events set data = jsonb_set(data, '{amount}', '999') where position = $1")
        .bind(bad)
        .execute(&mut *tx)
        .await
        .expect("tamper");
    // And the stored hash of one already in the tree, as if recomputed for a forgery.
    sqlx::query("update events set hash = sha256(hash) where position = 2").execute(&mut *tx).await.expect("rehash");
    sqlx::query("alter table events enable trigger events_append_only").execute(&mut *tx).await.expect("enable");
    tx.commit().await.expect("commit");
    let verify = app.get("/v1/audit/verify").await;
    assert_eq!(
        (verify.body["ok"].clone(), verify.body["first_bad_position"].clone()),
        (json!(false), json!(2)),
        "{verify:?}"
    );
    match tree::grow(&app.pool, tree::BATCH).await {
        Err(TreeError::Tampered { position }) => assert_eq!(position, bad),
        other => panic!("the tree grew over a tampered event: {other:?}"),
    }
    assert_eq!(tree::size(&app.pool).await.expect("size"), bad - 1, "the tree stops just before it");
    // A head over it is refused at once, naming the position, in every process; one
    // before it is signed.
    let r = app.get(&format!("/v1/audit/tree-head?tree_size={}", size + 4)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "no head over it: {r:?}");
    assert!(r.body["detail"].as_str().is_some_and(|d| d.contains(&format!("position {bad}"))), "{r:?}");
    let r = app.get(&format!("/v1/audit/tree-head?tree_size={}", bad - 1)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // Nodes that do not hash their event or children are refused, whoever inserts them:
    // made-up roots cannot be put in the tree to be signed.
    for (level, index) in [(0i16, bad - 1), (4, 1), (4, 1_000), (5, 0), (9, 0)] {
        let forged = sqlx::query("insert into merkle_nodes (level, index, hash) values ($1, $2, sha256('forged'))")
            .bind(level)
            .bind(index)
            .execute(&app.pool)
            .await;
        assert!(forged.is_err(), "a forged node at ({level}, {index}) was stored");
    }
    // The head signed earlier still stands for what was in the tree …
    let again = app.get(&format!("/v1/audit/tree-head?tree_size={size}")).await.body;
    assert_eq!(again["root_hash"], signed["root_hash"]);
    // … and the event whose stored hash changed no longer proves its inclusion: the
    // block it is in no longer folds to the subtree the tree stored over it.
    let proof = app.get(&format!("/v1/audit/proofs/inclusion?position=2&tree_size={size}")).await;
    assert_eq!(proof.status, StatusCode::INTERNAL_SERVER_ERROR, "{proof:?}");
    assert!(proof.body["detail"].as_str().is_some_and(|d| d.contains("positions 1 to 16")), "{proof:?}");
}

/// The service's own role, or any session, tries to make the tree say what the log does
/// not: nodes checked against tables a session shadows with temporary ones, a state row
/// moved by hand, and the open block's stored hashes changed after they entered the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_cannot_be_forged_through_its_tables_or_its_state() {
    use ledger_infrastructure::tree::{self, Grown};
    let app = TestApp::spawn_mode(test_config(), ledger_api::run::serve::Mode::Api).await;
    history(&app, 20).await;
    if app.state.store.head().await.expect("head") % 16 == 0 {
        assert_eq!(app.deposit(app.open_account("EUR", 0).await, 1, "EUR").await.status, StatusCode::CREATED);
    }
    let size = app.state.store.head().await.expect("head");
    assert_eq!(tree::grow(&app.pool, tree::BATCH).await.expect("grows"), Grown::To(size));
    assert_ne!(size % 16, 0, "the last block is open");
    let signed = app.get(&format!("/v1/audit/tree-head?tree_size={size}")).await.body;

    // Temporary tables named like the log's are not what the checks read.
    // A session of its own (not the pool's: its temporary tables would outlive the test).
    let mut session: sqlx::PgConnection =
        <sqlx::PgConnection as sqlx::Connection>::connect(&app.state.config.database_url).await.expect("connection");
    for statement in [
        "create temp table merkle_nodes (level int2, index int8, hash bytea)",
        "insert into merkle_nodes values (4, 100, sha256('a')), (4, 101, sha256('b'))",
        "create temp table events (position int8, hash bytea)",
        "insert into events select 16000 + g, sha256(g::text::bytea) from generate_series(1, 16) g",
    ] {
        sqlx::query(statement).execute(&mut session).await.expect(statement);
    }
    for forged in [
        "insert into public.merkle_nodes values (5, 50, sha256('\\x01'::bytea || sha256('a') || sha256('b')))",
        "insert into public.merkle_nodes select 4, 1000, (select hash from public.merkle_nodes limit 0)",
    ] {
        assert!(sqlx::query(forged).execute(&mut session).await.is_err(), "{forged} was stored");
    }
    sqlx::Connection::close(session).await.expect("closed");

    // The state row, as the service's role: no shrinking, no made-up size, tail or stop.
    for forged in [
        "update merkle_state set size = 0, last_hash = null, tail = '{}'",
        "update merkle_state set size = size + 1",
        "update merkle_state set tail = '{}'",
        "update merkle_state set stopped_at = 1",
    ] {
        let mut tx = app.pool.begin().await.expect("tx");
        sqlx::query("set local role ledger_app").execute(&mut *tx).await.expect("role");
        assert!(sqlx::query(forged).execute(&mut *tx).await.is_err(), "{forged} was accepted");
    }

    // A superuser changes the stored hash of an event of the open block: the head at that
    // size is still the one signed (the tree folds the open block from the leaves it
    // recomputed), and the tree does not grow over the block it no longer matches.
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query("alter table events disable trigger events_append_only").execute(&mut *tx).await.expect("disable");
    sqlx::query("update events set hash = sha256(hash) where position = $1")
        .bind(size)
        .execute(&mut *tx)
        .await
        .expect("tamper");
    sqlx::query("alter table events enable trigger events_append_only").execute(&mut *tx).await.expect("enable");
    tx.commit().await.expect("commit");
    let again = app.get(&format!("/v1/audit/tree-head?tree_size={size}")).await.body;
    assert_eq!(again["root_hash"], signed["root_hash"], "{again}");
    history(&app, 16).await;
    assert!(tree::grow(&app.pool, tree::BATCH).await.is_err(), "the tree grew over a changed hash");
    assert_eq!(tree::size(&app.pool).await.expect("size"), size);
}
