//! Chunk lists and manifests as they cross the network: the device's JSON chunk list,
//! and the binary manifest an edge reads from its upstream (whole, or its length from
//! the header of a stream). Never a panic; a manifest that decodes re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_edge::protocol::chunklist::ChunkList;
use update_edge::store::Manifest;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ChunkList>(data);
    if data.len() >= Manifest::HEADER {
        let _ = Manifest::encoded_len(&data[..Manifest::HEADER]);
    }
    if let Ok(m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.encode()).expect("its own encoding decodes");
        assert_eq!(again, m);
        let total: u64 = m.chunks.iter().map(|c| u64::from(c.len)).sum();
        assert_eq!(total, m.size);
    }
});
