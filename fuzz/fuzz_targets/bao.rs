//! The verified-streaming decoder an edge reads upstream chunks with. A chunk from the
//! input is encoded from an offset the input names (its group first, the groups before
//! it last), then tampered with as the input says (flipped bytes, a cut): every
//! group the decoder hands out must equal the chunk's bytes at that offset (nothing
//! unverified gets through), and an untouched encoding decodes whole. Raw input is also
//! decoded against its own hash.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use update_edge::hash::Hash;
use update_edge::protocol::bao;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // A chunk of up to 64 KiB (four groups), from a seed, so groups are easy to reach.
    let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let mut chunk = vec![0u8; len];
    let mut x = u64::from(data[2]) | 1;
    for b in &mut chunk {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let chunk = Bytes::from(chunk);
    let hash = Hash::of(&chunk);
    // Where the receiver wants to start: anywhere in the chunk, or past it (plain).
    let from = u64::from(data[2]) << 8;
    let mut enc: Vec<u8> = bao::encode_from(&chunk, None, from).concat();
    let tamper = &data[3..];
    for t in tamper.chunks(3) {
        let pos = usize::from(u16::from_le_bytes([t[0], *t.get(1).unwrap_or(&0)]));
        match t.get(2) {
            Some(&flip) if pos < enc.len() => enc[pos] ^= flip.max(1),
            _ => enc.truncate(pos.min(enc.len())),
        }
    }
    let untouched = tamper.is_empty();
    let r = runtime().block_on(bao::decode_from(
        hash,
        Bytes::from(enc),
        1 << 20,
        from,
        |at, group| {
            let at = at as usize;
            assert_eq!(
                &chunk[at..at + group.len()],
                &group[..],
                "an unverified group at {at}"
            );
        },
    ));
    if untouched {
        let (size, outboard) = r.expect("an untouched encoding decodes");
        assert_eq!(size as usize, chunk.len());
        assert_eq!(
            outboard,
            bao::outboard(&chunk).1,
            "the outboard a receiver keeps"
        );
    }
    let raw = Bytes::copy_from_slice(&data[3..]);
    let _ = runtime().block_on(bao::decode_from(
        Hash::of(&data[..3]),
        raw,
        1 << 20,
        from,
        |_, _| {},
    ));
});
