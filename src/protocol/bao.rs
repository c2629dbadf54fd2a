//! Verified streaming of one chunk between nodes: the chunk's bytes interleaved with the
//! nodes of its own blake3 tree (the bao encoding, as `bao-tree`/iroh-blobs use it), in
//! 16 KiB groups.
//!
//! A receiver that knows only the chunk's address (its blake3) checks every parent pair
//! against the hash above it and every 16 KiB group against its leaf hash, so it can pass
//! each group on the moment it arrives, instead of after the whole chunk (up to 1 MiB)
//! has arrived and been hashed. Nothing else is trusted: the tree is blake3's own, rooted
//! at the address, not a second hash list.
//!
//! Body: the chunk's size (u64, little-endian), then parent pairs (64 bytes) and groups in
//! pre-order. Overhead: 64 bytes per 16 KiB (0.4 %).
//!
//! The parent pairs alone, in pre-order, are the chunk's *outboard*. Stores keep it beside
//! the chunk (computed at ingest in the same pass as the chunk's address, or received with
//! a fill), so a sender encodes a chunk without hashing it again: the first group leaves
//! as soon as the chunk is read, not after its whole tree has been computed.

use bao_tree::io::fsm::{ResponseDecoder, ResponseDecoderNext};
use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::Outboard;
use bao_tree::io::BaoContentItem;
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use bytes::{Bytes, BytesMut};
use iroh_io::AsyncStreamReader;

use crate::hash::Hash;

/// Verification granularity: 2^4 blake3 chunks of 1 KiB.
pub const BLOCK: BlockSize = BlockSize::from_chunk_log(4);

/// Media type of an encoded chunk.
pub const CONTENT_TYPE: &str = "application/vnd.update-edge.bao";

/// The media type of an encoding from `start` ([`encode_from`]): [`CONTENT_TYPE`] with a
/// `start` parameter, so the body says how it is laid out wherever it is relayed or
/// cached (a sender that ignores `from` sends the plain type and encoding).
pub fn content_type_from(start: u64) -> String {
    match start {
        0 => CONTENT_TYPE.to_string(),
        _ => format!("{CONTENT_TYPE}; start={start}"),
    }
}

/// Where the encoding a response of media type `content_type` carries starts: its
/// `start` parameter, 0 without one. A wrong value only makes the chunk fail
/// verification.
pub fn start_of(content_type: &str) -> u64 {
    content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().strip_prefix("start="))
        .find_map(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes of the encoding of a chunk of `size` bytes.
pub fn encoded_len(size: u64) -> u64 {
    8 + BaoTree::new(size, BLOCK).outboard_size() + size
}

/// Bytes of the outboard of a chunk of `size` bytes (0 up to one group).
pub fn outboard_len(size: u64) -> usize {
    BaoTree::new(size, BLOCK).outboard_size() as usize
}

/// The chunk's address and its outboard (parent pairs in pre-order; empty for a chunk of
/// one group), from one pass over its bytes.
pub fn outboard(chunk: &[u8]) -> (Hash, Vec<u8>) {
    if chunk.len() <= BLOCK.bytes() {
        return (Hash::of(chunk), Vec::new());
    }
    let o = PreOrderMemOutboard::create(chunk, BLOCK);
    (Hash::from(o.root), o.data)
}

/// The encoding of `chunk` as frames: parent pairs gathered into small buffers, the
/// groups as slices of `chunk` (not copied). Hashes the chunk once, to build its tree.
pub fn encode(chunk: &Bytes) -> Vec<Bytes> {
    encode_with(chunk, None)
}

/// [`encode`] with the chunk's stored outboard: no hashing. An outboard of the wrong
/// length for the chunk is ignored (the tree is computed instead); one whose pairs are
/// wrong makes an encoding the receiver refuses, never one it accepts.
pub fn encode_with(chunk: &Bytes, stored: Option<&[u8]>) -> Vec<Bytes> {
    encode_from(chunk, stored, 0)
}

/// Where an encoding asked to start at byte `from` of a chunk of `size` bytes starts:
/// the 16 KiB group holding `from`, or 0 (the plain encoding) for a chunk of one group
/// or a `from` at or past its end.
pub fn group_start(size: u64, from: u64) -> u64 {
    let group = BLOCK.bytes() as u64;
    if size <= group || from >= size {
        0
    } else {
        from / group * group
    }
}

/// The two parts of an encoding from `start` (a group start): the groups from `start`
/// to the chunk's end, then those before it. For `start` 0, the whole chunk.
fn parts(start: u64) -> [ChunkRanges; 2] {
    let start = ChunkNum::chunks(start);
    [
        ChunkRanges::from(start..),
        ChunkRanges::from(ChunkNum(0)..start),
    ]
}

/// The encoding of `chunk` for a reader that wants byte `from` first: after the size,
/// the groups from the one holding `from` ([`group_start`]) to the chunk's end, each
/// with the parents that verify it, then the groups before it the same way. The reader
/// verifies its first byte after one group, however far into the chunk it lies, and
/// still receives (and verifies) the whole chunk. For `from` 0 this is the plain
/// encoding. The parents on the path to `from`'s group are sent twice (64 bytes each,
/// at most one per tree level).
pub fn encode_from(chunk: &Bytes, stored: Option<&[u8]>, from: u64) -> Vec<Bytes> {
    let outboard = match stored {
        Some(data) if data.len() == outboard_len(chunk.len() as u64) => PreOrderMemOutboard {
            // Unused by `load`; the receiver checks against the address it asked for.
            root: blake3::Hash::from_bytes([0; 32]),
            tree: BaoTree::new(chunk.len() as u64, BLOCK),
            data: data.to_vec(),
        },
        _ => PreOrderMemOutboard::create(chunk, BLOCK),
    };
    let tree = outboard.tree;
    let mut frames = Vec::with_capacity(chunk.len() / BLOCK.bytes() + 4);
    let mut parents = BytesMut::with_capacity(8 + 64 * 12);
    parents.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
    for part in parts(group_start(chunk.len() as u64, from)) {
        for item in tree.ranges_pre_order_chunks_iter_ref(&part, 0) {
            match item {
                BaoChunk::Parent { node, .. } => {
                    // A pre-order outboard built from the whole chunk holds every parent.
                    if let Ok(Some((l, r))) = outboard.load(node) {
                        parents.extend_from_slice(l.as_bytes());
                        parents.extend_from_slice(r.as_bytes());
                    }
                }
                BaoChunk::Leaf {
                    start_chunk, size, ..
                } => {
                    if !parents.is_empty() {
                        frames.push(parents.split().freeze());
                    }
                    let at = start_chunk.to_bytes() as usize;
                    frames.push(chunk.slice(at..at + size));
                }
            }
        }
    }
    if !parents.is_empty() {
        frames.push(parents.freeze());
    }
    frames
}

/// Bytes of [`encode_from`]'s encoding of a chunk of `size` bytes from `from`.
pub fn encoded_len_from(size: u64, from: u64) -> u64 {
    let start = group_start(size, from);
    if start == 0 {
        return encoded_len(size);
    }
    let tree = BaoTree::new(size, BLOCK);
    let parents = parts(start)
        .iter()
        .flat_map(|part| tree.ranges_pre_order_chunks_iter_ref(part, 0))
        .filter(|item| matches!(item, BaoChunk::Parent { .. }))
        .count() as u64;
    8 + 64 * parents + size
}

/// True when bytes `from..to` of a chunk are what its address says, checked against the
/// chunk's stored outboard: only the 16 KiB groups that overlap the range are hashed,
/// and their parents up to the root (the address) are checked from the outboard. A
/// chunk of one group (no outboard) is hashed whole. A wrong outboard or wrong bytes in
/// the range fail; bytes outside the range are not looked at.
pub fn verify_range(hash: Hash, chunk: &[u8], outboard: &[u8], from: usize, to: usize) -> bool {
    let size = chunk.len() as u64;
    if size <= BLOCK.bytes() as u64 || outboard.len() != outboard_len(size) {
        return Hash::of(chunk) == hash;
    }
    if from >= to || to > chunk.len() {
        return false;
    }
    let tree = BaoTree::new(size, BLOCK);
    let outboard = bao_tree::io::outboard::PreOrderOutboard {
        root: blake3::Hash::from_bytes(*hash.as_bytes()),
        tree,
        data: outboard,
    };
    let ranges = ChunkRanges::from(
        bao_tree::ChunkNum::chunks(from as u64 / 1024 * 1024)
            ..bao_tree::ChunkNum::chunks(to as u64),
    );
    bao_tree::io::sync::encode_ranges_validated(chunk, outboard, &ranges, std::io::sink()).is_ok()
}

/// Why an encoded chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The stream said the chunk is larger than the receiver accepts.
    #[error("encoded chunk of {0} bytes is over the limit")]
    TooLarge(u64),
    /// A parent or group did not hash to what the tree above it says.
    #[error("chunk failed verification")]
    Corrupt,
    /// The stream ended early or could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the encoding of chunk `hash` from `reader`, handing each group to `on_group`
/// (its offset in the chunk, its bytes) as soon as it verifies; returns the chunk's size
/// and its outboard (the verified parent pairs, to store beside the chunk).
/// Nothing unverified reaches `on_group`; a stream that ends early or carries a byte
/// that does not belong to `hash` fails.
pub async fn decode<R: AsyncStreamReader>(
    hash: Hash,
    reader: R,
    max: u64,
    on_group: impl FnMut(u64, Bytes),
) -> Result<(u64, Vec<u8>), DecodeError> {
    decode_from(hash, reader, max, 0, on_group).await
}

/// [`decode`] of an encoding made by [`encode_from`] with `from`: groups arrive from
/// `from`'s group to the chunk's end, then from its start; the outboard returned is the
/// whole chunk's, in pre-order, as [`decode`] gives it.
pub async fn decode_from<R: AsyncStreamReader>(
    hash: Hash,
    mut reader: R,
    max: u64,
    from: u64,
    mut on_group: impl FnMut(u64, Bytes),
) -> Result<(u64, Vec<u8>), DecodeError> {
    let size = u64::from_le_bytes(reader.read_exact::<8>().await?);
    if size > max {
        return Err(DecodeError::TooLarge(size));
    }
    let tree = BaoTree::new(size, BLOCK);
    let root = blake3::Hash::from_bytes(*hash.as_bytes());
    let mut outboard = vec![0u8; tree.outboard_size() as usize];
    for part in parts(group_start(size, from)) {
        if part.is_empty() {
            continue;
        }
        let mut decoder = ResponseDecoder::new(root, part, tree, reader);
        let mut first_group = true;
        reader = loop {
            match decoder.next().await {
                ResponseDecoderNext::Done(r) => break r,
                ResponseDecoderNext::More((next, item)) => {
                    match item {
                        Ok(BaoContentItem::Leaf(leaf)) => {
                            on_group(leaf.offset, leaf.data);
                            // A stream already received whole decodes without waiting:
                            // the first group of each part (what a reader starting there
                            // waits for) goes to its readers (woken by `on_group`, often
                            // on this thread) before the next is hashed. Later groups
                            // are handed out as a batch per socket read (a yield per
                            // group made readers write 16 KiB at a time: 8 % more fill
                            // CPU).
                            if std::mem::take(&mut first_group) {
                                tokio::task::yield_now().await;
                            }
                        }
                        // Verified against the pair above it; kept at its pre-order place.
                        Ok(BaoContentItem::Parent(p)) => {
                            if let Some(at) = tree.pre_order_offset(p.node) {
                                let at = at as usize * 64;
                                if let Some(slot) = outboard.get_mut(at..at + 64) {
                                    slot[..32].copy_from_slice(p.pair.0.as_bytes());
                                    slot[32..].copy_from_slice(p.pair.1.as_bytes());
                                }
                            }
                        }
                        Err(bao_tree::io::DecodeError::Io(e)) => return Err(DecodeError::Io(e)),
                        Err(
                            bao_tree::io::DecodeError::ParentNotFound(_)
                            | bao_tree::io::DecodeError::LeafNotFound(_),
                        ) => return Err(DecodeError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                        Err(_) => return Err(DecodeError::Corrupt),
                    }
                    decoder = next;
                }
            }
        };
    }
    Ok((size, outboard))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory reader handing out the stream in pieces of `step` bytes.
    struct Pieces {
        data: Bytes,
        step: usize,
    }

    impl AsyncStreamReader for Pieces {
        async fn read_bytes(&mut self, len: usize) -> std::io::Result<Bytes> {
            let n = len.min(self.data.len());
            let mut out = BytesMut::new();
            while out.len() < n {
                let take = self.step.min(n - out.len());
                out.extend_from_slice(&self.data.split_to(take));
            }
            Ok(out.freeze())
        }

        async fn read<const L: usize>(&mut self) -> std::io::Result<[u8; L]> {
            let b = self.read_bytes(L).await?;
            b[..]
                .try_into()
                .map_err(|_| std::io::ErrorKind::UnexpectedEof.into())
        }
    }

    fn data(n: usize) -> Bytes {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn a_range_verifies_against_the_outboard_and_only_its_own_bytes_matter() {
        for size in [5_000usize, 16 << 10, 100_000, 1 << 20] {
            let chunk = data(size);
            let (hash, ob) = outboard(&chunk);
            for (from, to) in [
                (0, 1),
                (0, size),
                (size - 1, size),
                (size / 3, size / 3 + 4096),
            ] {
                assert!(
                    verify_range(hash, &chunk, &ob, from, to),
                    "{size} {from}..{to}"
                );
                // A byte changed inside the range is caught.
                let mut bad = chunk.to_vec();
                bad[from] ^= 1;
                assert!(
                    !verify_range(hash, &bad, &ob, from, to),
                    "{size} {from}..{to}"
                );
            }
            if size > 3 * BLOCK.bytes() {
                // One outside the range and its groups is not read.
                let mut elsewhere = chunk.to_vec();
                elsewhere[size - 1] ^= 1;
                assert!(verify_range(hash, &elsewhere, &ob, 0, 100));
                // A damaged outboard is caught.
                let mut wrong = ob.clone();
                wrong[0] ^= 1;
                assert!(!verify_range(hash, &chunk, &wrong, 0, 100));
                // So is another chunk's address.
                assert!(!verify_range(Hash::of(b"x"), &chunk, &ob, 0, 100));
            }
        }
    }

    fn joined(frames: &[Bytes]) -> Bytes {
        frames.concat().into()
    }

    fn decode_all(hash: Hash, enc: Bytes) -> Result<(u64, Vec<u8>, usize), DecodeError> {
        decode_with_outboard(hash, enc).map(|(size, out, groups, _)| (size, out, groups))
    }

    type Decoded = (u64, Vec<u8>, usize, Vec<u8>);

    fn decode_with_outboard(hash: Hash, enc: Bytes) -> Result<Decoded, DecodeError> {
        decode_from_with_outboard(hash, enc, 0)
    }

    /// Decodes an encoding from `from`, checking that groups arrive from `from`'s group
    /// to the end, then from the start, each once; returns the chunk in order.
    fn decode_from_with_outboard(
        hash: Hash,
        enc: Bytes,
        from: u64,
    ) -> Result<Decoded, DecodeError> {
        let mut arrived: Vec<(u64, Bytes)> = Vec::new();
        // The decoder yields after each group (so its readers run): a runtime drives it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (size, outboard) = rt.block_on(decode_from(
            hash,
            Pieces {
                data: enc,
                step: 1000,
            },
            64 << 20,
            from,
            |at, b| arrived.push((at, b)),
        ))?;
        let start = group_start(size, from);
        let first = arrived.iter().position(|(at, _)| *at == start);
        assert_eq!(first, Some(0), "the group holding {from} comes first");
        let mut expected = start;
        for (at, b) in &arrived {
            if *at == 0 && start > 0 {
                assert_eq!(expected, size, "the start comes after the end");
                expected = 0;
            }
            assert_eq!(*at, expected, "groups arrive in order within each part");
            expected += b.len() as u64;
        }
        assert_eq!(expected, if start > 0 { start } else { size });
        let groups = arrived.len();
        arrived.sort_by_key(|(at, _)| *at);
        let out = arrived
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        Ok((size, out, groups, outboard))
    }

    #[test]
    fn an_encoding_from_any_offset_sends_that_group_first_and_the_whole_chunk() {
        let g = 16 * 1024u64;
        for n in [20_000u64, 16 * 1024 * 5, 300_000, 1 << 20, (1 << 20) + 1] {
            let chunk = data(n as usize);
            let hash = Hash::of(&chunk);
            let (_, stored) = outboard(&chunk);
            let mut froms = vec![0, 1, g - 1, g, g + 1, n / 2, n - g, n - 1, n, n + 5];
            froms.extend((0..n).step_by(g as usize * 3 + 7));
            for from in froms {
                let enc = joined(&encode_from(&chunk, Some(&stored), from));
                assert_eq!(
                    enc.len() as u64,
                    encoded_len_from(n, from),
                    "{n} from {from}"
                );
                assert_eq!(
                    joined(&encode_from(&chunk, None, from)),
                    enc,
                    "{n} from {from}: a computed tree gives the same stream"
                );
                let (size, out, groups, received) =
                    decode_from_with_outboard(hash, enc.clone(), from).unwrap();
                assert_eq!(size, n);
                assert_eq!(out, chunk, "{n} from {from}");
                assert_eq!(groups as u64, n.div_ceil(g), "{n} from {from}");
                assert_eq!(received, stored, "{n} from {from}: the whole outboard");
                // Every byte matters, in both parts (parents, the path sent twice, groups).
                for at in
                    (0..enc.len())
                        .step_by(enc.len() / 24 + 1)
                        .chain([8, 8 + 64, enc.len() - 1])
                {
                    let mut bad = enc.to_vec();
                    bad[at] ^= 0x04;
                    assert!(
                        decode_from_with_outboard(hash, bad.into(), from).is_err(),
                        "{n} from {from}: flipped byte {at} was accepted"
                    );
                }
                assert!(matches!(
                    decode_from_with_outboard(hash, enc.slice(..enc.len() - 1), from),
                    Err(DecodeError::Io(_))
                ));
                // Read from another offset than it was sent from, it does not verify.
                if group_start(n, from) != 0 {
                    assert!(decode_from_with_outboard(hash, enc.clone(), 0).is_err());
                }
            }
            // The media type carries the start; anything else reads as the plain one.
            for from in [0, n / 2] {
                let start = group_start(n, from);
                assert_eq!(start_of(&content_type_from(start)), start);
            }
            for (ty, start) in [
                (CONTENT_TYPE, 0),
                ("application/vnd.update-edge.bao; start=x", 0),
                ("application/vnd.update-edge.bao;start=32768", 32768),
                ("text/plain", 0),
            ] {
                assert_eq!(start_of(ty), start, "{ty}");
            }
            // From 0 it is the plain encoding.
            assert_eq!(
                joined(&encode_from(&chunk, None, 0)),
                joined(&encode(&chunk))
            );
            assert_eq!(encoded_len_from(n, 0), encoded_len(n));
        }
    }

    #[test]
    fn a_stream_received_whole_hands_out_its_first_group_before_hashing_the_rest() {
        use std::future::Future;
        let chunk = data(100_000);
        let enc = joined(&encode(&chunk));
        let groups = std::cell::Cell::new(0);
        let mut fut = Box::pin(decode(
            Hash::of(&chunk),
            Pieces {
                data: enc,
                step: 1 << 20,
            },
            1 << 20,
            |_, _| groups.set(groups.get() + 1),
        ));
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut polls = 0;
        while fut.as_mut().poll(&mut cx).is_pending() {
            polls += 1;
            assert_eq!(groups.get(), 1, "the first group, then its readers run");
        }
        assert_eq!(groups.get(), 100_000usize.div_ceil(16 << 10));
        assert_eq!(polls, 1, "it waited after the first group only");
    }

    #[test]
    fn chunks_round_trip_group_by_group_at_every_size() {
        for n in [
            0,
            1,
            1024,
            16 * 1024 - 1,
            16 * 1024,
            16 * 1024 + 1,
            300_000,
            1 << 20,
        ] {
            let chunk = data(n);
            let enc = joined(&encode(&chunk));
            assert_eq!(enc.len() as u64, encoded_len(n as u64), "size {n}");
            let (size, out, groups, received) =
                decode_with_outboard(Hash::of(&chunk), enc.clone()).unwrap();
            assert_eq!(size, n as u64);
            assert_eq!(out, chunk, "size {n}");
            assert_eq!(groups, n.div_ceil(16 * 1024).max(1), "size {n}");
            // The outboard a receiver keeps is the one a sender computes, and encoding
            // from it needs no hashing and gives the same stream.
            let (address, stored) = outboard(&chunk);
            assert_eq!(address, Hash::of(&chunk), "size {n}");
            assert_eq!(received, stored, "size {n}");
            assert_eq!(stored.len(), outboard_len(n as u64), "size {n}");
            assert_eq!(joined(&encode_with(&chunk, Some(&stored))), enc, "size {n}");
        }
    }

    #[test]
    fn a_stored_outboard_of_the_wrong_length_is_recomputed_a_wrong_one_is_refused() {
        let chunk = data(200_000);
        let hash = Hash::of(&chunk);
        let (_, stored) = outboard(&chunk);
        let good = joined(&encode(&chunk));
        assert_eq!(joined(&encode_with(&chunk, Some(&stored[64..]))), good);
        let mut wrong = stored.clone();
        wrong[100] ^= 1;
        assert!(matches!(
            decode_all(hash, joined(&encode_with(&chunk, Some(&wrong)))),
            Err(DecodeError::Corrupt)
        ));
    }

    #[test]
    fn a_flipped_bit_anywhere_or_a_short_stream_or_the_wrong_address_fails() {
        let chunk = data(100_000);
        let hash = Hash::of(&chunk);
        let enc = joined(&encode(&chunk));
        // Every parent byte, the size, and a byte in each group.
        let mut positions: Vec<usize> = (0..8 + 64 * 8).collect();
        positions.extend((0..enc.len()).step_by(4099));
        for at in positions.into_iter().filter(|&at| at < enc.len()) {
            let mut bad = enc.to_vec();
            bad[at] ^= 0x10;
            assert!(
                decode_all(hash, bad.into()).is_err(),
                "flipped byte {at} was accepted"
            );
        }
        assert!(matches!(
            decode_all(hash, enc.slice(..enc.len() - 1)),
            Err(DecodeError::Io(_))
        ));
        assert!(matches!(
            decode_all(Hash::of(b"other"), enc.clone()),
            Err(DecodeError::Corrupt)
        ));
        let mut huge = enc.to_vec();
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode_all(hash, huge.into()),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
