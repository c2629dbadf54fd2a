//! Chunk lists and manifests as they cross the network: the device's JSON chunk list,
//! the binary manifest an edge reads from its upstream (whole, or its length from the
//! header of a stream), and a bucket manifest (a manifest and its chunks' locations, read
//! back from the origin's bucket). Never a panic; what decodes re-encodes to itself.
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
    if let Ok((m, locations)) = update_edge::bucket::decode_manifest(data) {
        assert_eq!(locations.len(), m.chunks.len());
        let again = update_edge::bucket::encode_manifest(&m, &locations);
        let (m2, l2) =
            update_edge::bucket::decode_manifest(&again).expect("its own encoding decodes");
        assert_eq!((m2, l2), (m, locations));
    }
});
