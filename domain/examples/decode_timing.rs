//! What reading an event back from the store's (type, data) pair costs, the way it was
//! read before (`json!({"type", "data"})`, whose sorted keys make serde buffer the
//! payload) against `Event::from_data` and `Event::from_parts` (docs/PERFORMANCE.md,
//! issue 27, twelfth stop). Run: `cargo run --release -p ledger-domain --example decode_timing`.
use ledger_domain::Event;
fn main() {
    let data = serde_json::json!({"transfer_id":"0190a0b0-0000-7000-8000-000000000001","from":"0190a0b0-0000-7000-8000-000000000002","to":"0190a0b0-0000-7000-8000-000000000003","amount":42,"currency":"EUR","reference":null,"metadata":null,"reverses":null,"effective_at":null});
    let t = "TransferPosted";
    let e = Event::from_data(t, &data).expect("decodes");
    let (t2, d2) = e.to_parts();
    let n = 200_000;
    for round in 0..2 {
        let s = std::time::Instant::now();
        for _ in 0..n { let v: Event = serde_json::from_value(serde_json::json!({"type": t2, "data": d2.clone()})).unwrap(); std::hint::black_box(v); }
        let old = s.elapsed().as_nanos() as f64 / n as f64;
        let s = std::time::Instant::now();
        for _ in 0..n { let v = Event::from_data(t2, &d2).unwrap(); std::hint::black_box(v); }
        let new_ref = s.elapsed().as_nanos() as f64 / n as f64;
        let s = std::time::Instant::now();
        for _ in 0..n { let v = Event::from_parts(t2, d2.clone()).unwrap(); std::hint::black_box(v); }
        let new_owned = s.elapsed().as_nanos() as f64 / n as f64;
        println!("round {round}: old (clone + json! + buffered) {old:.0} ns, from_data {new_ref:.0} ns, from_parts with clone {new_owned:.0} ns");
    }
}
