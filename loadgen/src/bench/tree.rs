//! `tree`: the Merkle tree over a log of `events` events (issue 30): how fast the
//! worker's step grows it (events/s, CPU per event of this process and of Postgres),
//! then the latency of a tree head at a random size, an inclusion proof of a random
//! position at the head, and a consistency proof between two random sizes, each
//! median and p99 over `iterations` calls (at least 200), every proof checked with the
//! RFC 9162 verification algorithms.

use super::stats::summarize_ms;
use super::{BenchDb, Cpu, Params, rate, round};
use anyhow::{bail, ensure};
use ledger_infrastructure::merkle;
use ledger_infrastructure::tree::{self, Grown};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::time::Instant;

pub async fn run(db: &BenchDb, p: &Params) -> anyhow::Result<Value> {
    let (_, generation) = super::rebuild::generate(db, p, "tree").await?;
    let head = generation["events"].as_i64().expect("the generation reports its events");

    eprintln!("tree: growing over {head} events");
    let started = Instant::now();
    let cpu = Cpu::now();
    let mut steps = 0u64;
    loop {
        match tree::grow(&db.pool, tree::BATCH).await? {
            Grown::To(size) => {
                steps += 1;
                if steps.is_multiple_of(40) {
                    eprintln!("  tree: {size}/{head}");
                }
            }
            Grown::AtHead(size) => {
                ensure!(size == head, "the tree stopped at {size}, the head is {head}");
                break;
            }
        }
    }
    let grow_s = started.elapsed().as_secs_f64();
    let (client_s, postgres_s) = cpu.delta();
    let per_event_us = |s: f64| round(s * 1e6 / head as f64, 1);
    let nodes: i64 = sqlx::query_scalar("select count(*) from merkle_nodes").fetch_one(&db.pool).await?;
    let growth = json!({
        "events": head,
        "steps": steps,
        "seconds": round(grow_s, 3),
        "events_per_s": rate(head as u64, grow_s),
        "cpu_us_per_event": { "worker": per_event_us(client_s), "postgres": per_event_us(postgres_s) },
        "nodes": nodes,
        "merkle_nodes_mb": db.relation_mb("merkle_nodes").await?,
    });
    eprintln!("tree: grown in {grow_s:.1} s; measuring heads and proofs");

    let iterations = p.iterations.max(200);
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let full = tree::head(&db.pool, head).await?;
    // Heads at random sizes (each checked against the full head by a consistency proof).
    let mut head_times = Vec::with_capacity(iterations);
    for i in 0..iterations + 5 {
        let size = rng.random_range(1..=head);
        let t = Instant::now();
        let h = tree::head(&db.pool, size).await?;
        if i >= 5 {
            head_times.push(t.elapsed());
        }
        if i < 20 {
            let proof = tree::consistency(&db.pool, size, head).await?;
            ensure!(
                merkle::verify_consistency(size as u64, head as u64, &h.root, &full.root, &proof),
                "the head at {size} is not consistent with the head at {head}"
            );
        }
    }
    let mut inclusion_times = Vec::with_capacity(iterations);
    let mut checked = 0u64;
    for i in 0..iterations + 5 {
        let position = rng.random_range(1..=head);
        let t = Instant::now();
        let (leaf, path) = tree::inclusion(&db.pool, position, head).await?;
        if i >= 5 {
            inclusion_times.push(t.elapsed());
        }
        if !merkle::verify_inclusion(position as u64 - 1, head as u64, &leaf, &path, &full.root) {
            bail!("the inclusion proof of {position} does not verify");
        }
        checked += 1;
    }
    let mut consistency_times = Vec::with_capacity(iterations);
    for i in 0..iterations + 5 {
        let to = rng.random_range(1..=head);
        let from = rng.random_range(1..=to);
        let t = Instant::now();
        let proof = tree::consistency(&db.pool, from, to).await?;
        if i >= 5 {
            consistency_times.push(t.elapsed());
        }
        ensure!(proof.len() <= 2 * 64, "a consistency proof of {} hashes", proof.len());
    }
    Ok(json!({
        "generation": generation,
        "growth": growth,
        "tree_head": summarize_ms(&head_times),
        "inclusion_proof": summarize_ms(&inclusion_times),
        "consistency_proof": summarize_ms(&consistency_times),
        "inclusion_proofs_verified": checked,
    }))
}
