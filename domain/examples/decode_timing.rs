//! What reading an event back from the store's (type, data) pair costs, the way it was
//! read before (`json!({"type", "data"})`, whose sorted keys make serde buffer the
//! payload) against `Event::from_data` and `Event::from_parts` (docs/PERFORMANCE.md,
//! issue 27, twelfth stop). Run: `cargo run --release -p ledger-domain --example decode_timing`.
use ledger_domain::Event;
use std::time::Instant;

fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let data = serde_json::json!({
        "transfer_id": "0190a0b0-0000-7000-8000-000000000001", "from": "0190a0b0-0000-7000-8000-000000000002",
        "to": "0190a0b0-0000-7000-8000-000000000003", "amount": 42, "currency": "EUR", "reference": null,
        "metadata": null, "reverses": null, "effective_at": null
    });
    let (t, data) = Event::from_data("TransferPosted", &data).expect("a transfer").to_parts();
    let n = 200_000;
    for round in 0..2 {
        let before = per_call(n, || {
            let tagged = serde_json::json!({ "type": t, "data": data.clone() });
            std::hint::black_box(serde_json::from_value::<Event>(tagged).expect("decodes"));
        });
        let in_place = per_call(n, || {
            std::hint::black_box(Event::from_data(t, &data).expect("decodes"));
        });
        let owned = per_call(n, || {
            std::hint::black_box(Event::from_parts(t, data.clone()).expect("decodes"));
        });
        println!(
            "round {round}: before (a copy, json!, buffered) {before:.0} ns, from_data {in_place:.0} ns, \
             from_parts of a copy {owned:.0} ns"
        );
    }
}
