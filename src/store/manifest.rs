//! A blob's manifest: its size and ordered chunk list, and the byte encoding stored in
//! the `blobs` column family. Pure logic: decoding never trusts the stored bytes.

use crate::hash::Hash;

const MAGIC: &[u8; 4] = b"UEM1";
const ENTRY: usize = 32 + 4;
const HEADER: usize = 4 + 8 + 4;

/// One chunk of a blob, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// Size and chunk list of a blob, with cumulative offsets for range lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
    /// `ends[i]` = offset one past chunk `i`.
    ends: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("corrupt manifest: {0}")]
pub struct BadManifest(pub &'static str);

impl Manifest {
    /// Bytes of the encoding before the chunk entries (magic, size, chunk count).
    pub const HEADER: usize = HEADER;

    pub fn new(chunks: Vec<ChunkRef>) -> Self {
        let mut ends = Vec::with_capacity(chunks.len());
        let mut off = 0u64;
        for c in &chunks {
            off += u64::from(c.len);
            ends.push(off);
        }
        Manifest {
            size: off,
            chunks,
            ends,
        }
    }

    /// `start..end` as a readable range of this blob, or the store's range error.
    pub fn check_range(&self, start: u64, end: u64) -> Result<(), super::StoreError> {
        if start > end || end > self.size {
            return Err(super::StoreError::BadRange {
                start,
                end,
                size: self.size,
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c.hash.as_bytes());
            out.extend_from_slice(&c.len.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BadManifest> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(BadManifest("bad header"));
        }
        let size = u64::from_le_bytes(bytes[4..12].try_into().map_err(|_| BadManifest("size"))?);
        let count = u32::from_le_bytes(bytes[12..16].try_into().map_err(|_| BadManifest("count"))?)
            as usize;
        let body = &bytes[HEADER..];
        if body.len() != count.checked_mul(ENTRY).ok_or(BadManifest("count"))? {
            return Err(BadManifest("length does not match chunk count"));
        }
        let chunks: Vec<ChunkRef> = body
            .chunks_exact(ENTRY)
            .map(|e| ChunkRef {
                hash: Hash::from_slice(&e[..32]).unwrap_or(Hash([0; 32])),
                len: u32::from_le_bytes([e[32], e[33], e[34], e[35]]),
            })
            .collect();
        if chunks.iter().any(|c| c.len == 0) {
            return Err(BadManifest("empty chunk"));
        }
        let m = Manifest::new(chunks);
        if m.size != size {
            return Err(BadManifest("chunk lengths do not add up to size"));
        }
        Ok(m)
    }

    /// Bytes in the encoding of a manifest whose first [`Manifest::HEADER`] bytes are
    /// `header` (what a reader of a stream needs to know before reading the rest).
    pub fn encoded_len(header: &[u8]) -> Result<usize, BadManifest> {
        if header.len() < HEADER || &header[..4] != MAGIC {
            return Err(BadManifest("bad header"));
        }
        let count = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        count
            .checked_mul(ENTRY)
            .and_then(|n| n.checked_add(HEADER))
            .ok_or(BadManifest("chunk count"))
    }

    /// Index of the chunk holding byte `offset` (`offset < size`).
    pub fn chunk_at(&self, offset: u64) -> usize {
        self.ends.partition_point(|&end| end <= offset)
    }

    /// Offset of the first byte of chunk `i`.
    pub fn start_of(&self, i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// Bytes of the distinct chunks that `ranges` (sorted, disjoint, within the blob,
    /// non-empty) touch: what reading them costs when no chunk is cached.
    pub fn chunk_bytes_under(&self, ranges: &[(u64, u64)]) -> u64 {
        let mut total = 0;
        let mut next = 0usize; // first chunk not yet counted
        for &(start, end) in ranges {
            if start >= end || end > self.size {
                continue;
            }
            let first = self.chunk_at(start).max(next);
            let last = self.chunk_at(end - 1);
            if first <= last {
                total += self.ends[last] - self.start_of(first);
                next = last + 1;
            }
        }
        total
    }

    /// Memory this manifest takes when cached.
    pub fn weight(&self) -> u64 {
        (self.chunks.len() * (ENTRY + 8) + 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::new(vec![
            ChunkRef {
                hash: Hash::of(b"a"),
                len: 10,
            },
            ChunkRef {
                hash: Hash::of(b"b"),
                len: 5,
            },
            ChunkRef {
                hash: Hash::of(b"c"),
                len: 1,
            },
        ])
    }

    #[test]
    fn ranges_past_the_end_or_backwards_are_refused() {
        let m = sample();
        assert!(m.check_range(0, m.size).is_ok());
        assert!(m.check_range(m.size, m.size).is_ok());
        assert!(matches!(
            m.check_range(0, m.size + 1),
            Err(crate::store::StoreError::BadRange { end, size, .. }) if end == m.size + 1 && size == m.size
        ));
        assert!(m.check_range(2, 1).is_err());
    }

    #[test]
    fn encoding_round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        let empty = Manifest::new(vec![]);
        assert_eq!(Manifest::decode(&empty.encode()).unwrap().size, 0);
    }

    #[test]
    fn chunk_bytes_under_ranges_count_each_chunk_once() {
        let m = sample(); // chunks 0..10, 10..15, 15..16
        assert_eq!(m.chunk_bytes_under(&[(0, 1)]), 10);
        assert_eq!(
            m.chunk_bytes_under(&[(0, 1), (5, 6)]),
            10,
            "same chunk once"
        );
        assert_eq!(m.chunk_bytes_under(&[(9, 11)]), 15);
        assert_eq!(m.chunk_bytes_under(&[(0, 1), (9, 11), (15, 16)]), 16);
        assert_eq!(m.chunk_bytes_under(&[(12, 13), (15, 16)]), 6);
        assert_eq!(
            m.chunk_bytes_under(&[(3, 3), (0, 99)]),
            0,
            "empty or out of bounds"
        );
    }

    #[test]
    fn offsets_map_to_chunks() {
        let m = sample();
        assert_eq!(m.size, 16);
        assert_eq!([0, 9, 10, 14, 15].map(|o| m.chunk_at(o)), [0, 0, 1, 1, 2]);
        assert_eq!([0, 1, 2].map(|i| m.start_of(i)), [0, 10, 15]);
    }

    #[test]
    fn a_manifest_s_length_is_known_from_its_header() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(
            Manifest::encoded_len(&bytes[..HEADER]).unwrap(),
            bytes.len()
        );
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert!(Manifest::encoded_len(&bytes[..HEADER - 1]).is_err());
        assert!(Manifest::encoded_len(b"UEM1").is_err());
        let mut other = bytes.clone();
        other[0] ^= 1;
        assert!(Manifest::encoded_len(&other[..HEADER]).is_err());
    }

    #[test]
    fn damaged_bytes_are_rejected() {
        let good = sample().encode();
        assert!(Manifest::decode(&good[..good.len() - 1]).is_err());
        let mut bad_size = good.clone();
        bad_size[4] ^= 1;
        assert!(Manifest::decode(&bad_size).is_err());
        assert!(Manifest::decode(b"nope").is_err());
    }
}
