//! What a device parses from the network before trusting it: TUF metadata of each role
//! (the director's keys read from root) and the director's signed check answer, checked
//! against a fixed root. Never a panic; an answer that verifies is impossible without
//! the director's key (none is here).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tough::schema::{Root, Signed, Snapshot, Targets, Timestamp};
use update_edge::catalog::version::Version;
use update_edge::client::trust::{verify_answer, Request};

fn root() -> &'static Root {
    static ROOT: OnceLock<Root> = OnceLock::new();
    ROOT.get_or_init(|| {
        let bytes = include_bytes!("../fixtures/root.json");
        serde_json::from_slice::<Signed<Root>>(bytes)
            .unwrap()
            .signed
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Signed<Root>>(data) {
        let _ = update_edge::protocol::trust::director_keys(&r.signed);
    }
    let _ = serde_json::from_slice::<Signed<Timestamp>>(data);
    let _ = serde_json::from_slice::<Signed<Snapshot>>(data);
    let _ = serde_json::from_slice::<Signed<Targets>>(data);
    let _ = update_edge::protocol::trust::version_of(data);
    let version: Version = "1.0.0".parse().unwrap();
    let req = Request {
        product: "gw",
        device_id: "d1",
        version: &version,
        nonce: "n",
    };
    assert!(
        verify_answer(root(), data, &req, 1_800_000_000).is_err(),
        "an answer verified without the director's key"
    );
});
