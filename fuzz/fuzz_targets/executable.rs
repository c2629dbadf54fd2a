//! Executable containers (whole files, archive members, executables at 4 KiB boundaries of an image) and the transform section, which apply reads from untrusted
//! old files and patches: whatever the bytes, the layout parser, the reference finder
//! the section decoder and the offset map return a result, never a panic. What the finder returns
//! holds: fields sorted, not overlapping, inside the file, and the same whatever the
//! size of the pieces the code is read in or where its scan is split in two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_edge::delta::exe::{
    code_refs, code_refs_split, find_refs, labels, project, width, Image, Layout, OffsetMap,
};

fuzz_target!(|data: &[u8]| {
    let bytes = data.to_vec();
    if let Some((image, tables)) = Image::parse_with_tables(&bytes) {
        let refs = find_refs(&bytes, &image, &tables).expect("tables are inside the file");
        let mut end = 0u64;
        for (&f, &k) in refs.fields.iter().zip(&refs.kinds) {
            assert!(u64::from(f) >= end, "fields overlap or are unsorted");
            end = u64::from(f) + width(k);
            assert!(end <= bytes.len() as u64, "field past the end of the file");
        }
        // The encoder's projection: a label per reference, the length kept.
        let l = labels(&bytes, &image, &refs).expect("parts are inside the file");
        assert_eq!(l.len(), refs.fields.len());
        assert_eq!(project(&bytes, &image, &refs).unwrap().len(), bytes.len());
        for layout in &image.parts {
            let whole = code_refs(&bytes, layout, 1 << 20).unwrap();
            assert_eq!(code_refs(&bytes, layout, 64).unwrap(), whole);
            // The scan split in two at the middle of each executable section that shares
            // its bytes with no other finds the same.
            let code: Vec<_> = layout.sections.iter().filter(|s| s.exec).collect();
            for s in &code {
                let (start, end) = (s.off, s.off + s.file_len);
                let alone = code
                    .iter()
                    .filter(|o| !std::ptr::eq(**o, *s))
                    .all(|o| o.off + o.file_len <= start || o.off >= end);
                if alone && s.file_len > 1 {
                    let split = code_refs_split(&bytes, layout, 64, start + s.file_len / 2);
                    assert_eq!(split.unwrap(), whole);
                }
            }
        }
    }
    let mut at = 0;
    if let Ok(i) = Image::decode(data, &mut at) {
        let mut again = Vec::new();
        i.encode(&mut again);
        let mut at2 = 0;
        assert_eq!(Image::decode(&again, &mut at2).unwrap(), i);
    }
    let mut at = 0;
    let _ = Layout::decode(data, &mut at);
    // The offset map apply builds from a patch's ops: spans sorted and disjoint.
    let copies: Vec<(u64, u64, u64)> = data
        .chunks_exact(6)
        .map(|c| {
            (
                u64::from(c[0]) * 97 + u64::from(c[1]),
                u64::from(c[2]) * 89 + u64::from(c[3]),
                u64::from(c[4]) + u64::from(c[5]),
            )
        })
        .collect();
    let map = OffsetMap::from_copies(copies, 256);
    for w in map.spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "offset map spans overlap");
    }
});
