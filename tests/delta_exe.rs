//! The x86-64 references transform (patch format version 2) on generated executables:
//! an ELF shared object and a PE DLL whose code grows in the middle, so every call,
//! RIP-relative address and table entry after the growth changes value. The patch must
//! round-trip, be version 2, and be far smaller than the byte-only patch; inputs that
//! are not executables keep getting version 1 patches.

mod common;

use update_edge::cli::demo::noise;
use update_edge::delta::{self, exe, DiffOptions};

fn opts() -> DiffOptions {
    DiffOptions {
        zstd_level: 3,
        block_size: 64 << 10,
        ..DiffOptions::default()
    }
}

fn diff(old: &[u8], new: &[u8], transform: bool) -> (Vec<u8>, delta::DiffReport) {
    let o = DiffOptions {
        exe_transform: transform,
        ..opts()
    };
    let mut patch = Vec::new();
    let report = delta::diff(&old.to_vec(), &new.to_vec(), &mut patch, &o, &|_| {}).unwrap();
    assert_eq!(report.patch_size, patch.len() as u64);
    (patch, report)
}

fn apply(old: &[u8], patch: &[u8]) -> Result<Vec<u8>, delta::DeltaError> {
    common::apply_both(old, patch)
}

fn version(patch: &[u8]) -> u16 {
    u16::from_le_bytes([patch[8], patch[9]])
}

/// Generated machine code: `funcs` functions of filler and instructions (rel32 calls and
/// jumps to other functions, RIP-relative loads from the data section at `data_va`),
/// with `grow` extra bytes inserted in the middle function. Returns the code and each
/// function's start offset.
fn code(funcs: usize, text_va: u64, data_va: u64, grow: usize) -> (Vec<u8>, Vec<u64>) {
    // Function sizes and contents come from the seed alone; the growth only moves them.
    let sizes: Vec<usize> = (0..funcs)
        .map(|i| 200 + (noise(2, i as u64 + 1)[0] as usize) * 4)
        .collect();
    let mut starts = Vec::new();
    let mut at = 0;
    for (i, s) in sizes.iter().enumerate() {
        starts.push(at as u64);
        at += s + if i == funcs / 2 { grow } else { 0 };
    }
    let mut out = Vec::with_capacity(at);
    for (i, &size) in sizes.iter().enumerate() {
        let r = noise(size, 1000 + i as u64);
        let body_end = out.len() + size + if i == funcs / 2 { grow } else { 0 };
        let mut k = 0;
        while out.len() + 16 < body_end {
            let here = text_va + out.len() as u64;
            match r[k % r.len()] % 4 {
                0 => {
                    let to = (r[(k + 1) % r.len()] as usize * 7 + i) % funcs;
                    let rel = (text_va + starts[to]) as i64 - (here + 5) as i64;
                    out.push(0xe8);
                    out.extend_from_slice(&(rel as i32).to_le_bytes());
                }
                1 => {
                    let item = u64::from(r[(k + 1) % r.len()]) * 16;
                    let rel = (data_va + item) as i64 - (here + 7) as i64;
                    out.extend_from_slice(&[0x48, 0x8d, 0x05]);
                    out.extend_from_slice(&(rel as i32).to_le_bytes());
                }
                _ => out.extend_from_slice(&[0x48, 0x89, 0xc7, 0x90]),
            }
            k += 1;
            if i == funcs / 2 && k == 3 {
                // The growth: new code, its own bytes.
                out.extend_from_slice(&noise(grow, 77));
            }
        }
        out.resize(body_end, 0xcc);
    }
    (out, starts)
}

fn put(v: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if v.len() < at + bytes.len() {
        v.resize(at + bytes.len(), 0);
    }
    v[at..at + bytes.len()].copy_from_slice(bytes);
}

fn align(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

/// An x86-64 ELF shared object: `.text`, `.rodata` (which the code loads from),
/// `.rela.dyn` (a relative relocation per function, pointing into `.data.rel.ro`) and
/// `.data.rel.ro`, with addresses 0x2000 above file offsets past `.text`.
fn elf(funcs: usize, grow: usize) -> Vec<u8> {
    const TEXT_OFF: usize = 0x1000;
    let text_va = TEXT_OFF as u64;
    // .rodata's place depends on .text's size; compute .text once to size it.
    let (probe, _) = code(funcs, text_va, 0, grow);
    let ro_off = align(TEXT_OFF + probe.len(), 0x1000);
    let ro_va = ro_off as u64 + 0x2000;
    let (text, starts) = code(funcs, text_va, ro_va, grow);
    let rodata = noise(4096 + 256 * 16, 5);
    let rela_off = align(ro_off + rodata.len(), 8);
    let rela_len = funcs * 24;
    let drr_off = align(rela_off + rela_len, 0x1000);
    let drr_va = drr_off as u64 + 0x2000;
    let drr_len = funcs * 8;
    let mut rela = Vec::new();
    for (i, s) in starts.iter().enumerate() {
        rela.extend_from_slice(&(drr_va + 8 * i as u64).to_le_bytes());
        rela.extend_from_slice(&8u64.to_le_bytes()); // R_X86_64_RELATIVE
        rela.extend_from_slice(&(text_va + s).to_le_bytes());
    }
    let names = b"\0.text\0.rodata\0.rela.dyn\0.data.rel.ro\0.shstrtab\0";
    let str_off = drr_off + drr_len;
    let sh_off = align(str_off + names.len(), 8);
    let mut f = vec![0u8; 64];
    f[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    put(&mut f, 16, &3u16.to_le_bytes()); // ET_DYN
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 40, &(sh_off as u64).to_le_bytes());
    put(&mut f, 52, &64u16.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 58, &64u16.to_le_bytes());
    put(&mut f, 60, &6u16.to_le_bytes());
    put(&mut f, 62, &5u16.to_le_bytes());
    put(&mut f, TEXT_OFF, &text);
    put(&mut f, ro_off, &rodata);
    put(&mut f, rela_off, &rela);
    put(&mut f, drr_off, &vec![0u8; drr_len]);
    put(&mut f, str_off, names);
    // (name, type, flags, addr, offset, size, entsize)
    let sections: [(u32, u32, u64, u64, usize, usize, u64); 6] = [
        (0, 0, 0, 0, 0, 0, 0),
        (1, 1, 6, text_va, TEXT_OFF, text.len(), 0),
        (7, 1, 2, ro_va, ro_off, rodata.len(), 0),
        (15, 4, 2, rela_off as u64 + 0x2000, rela_off, rela_len, 24),
        (25, 1, 3, drr_va, drr_off, drr_len, 0),
        (38, 3, 0, 0, str_off, names.len(), 0),
    ];
    for (i, &(name, ty, flags, addr, off, size, entsize)) in sections.iter().enumerate() {
        let at = sh_off + 64 * i;
        put(&mut f, at, &name.to_le_bytes());
        put(&mut f, at + 4, &ty.to_le_bytes());
        put(&mut f, at + 8, &flags.to_le_bytes());
        put(&mut f, at + 16, &addr.to_le_bytes());
        put(&mut f, at + 24, &(off as u64).to_le_bytes());
        put(&mut f, at + 32, &(size as u64).to_le_bytes());
        put(&mut f, at + 48, &8u64.to_le_bytes());
        put(&mut f, at + 56, &entsize.to_le_bytes());
    }
    f
}

/// An x86-64 PE DLL: `.text`, `.rdata` (loaded from, and holding a pointer per
/// function), `.pdata` (start, end, unwind RVAs per function) and `.reloc` (a DIR64
/// entry per pointer).
fn pe(funcs: usize, grow: usize) -> Vec<u8> {
    const BASE: u64 = 0x1_4000_0000;
    const TEXT_RVA: u64 = 0x1000;
    let (probe, _) = code(funcs, BASE + TEXT_RVA, 0, grow);
    let rdata_rva = align(TEXT_RVA as usize + probe.len(), 0x1000) as u64;
    let (text, starts) = code(funcs, BASE + TEXT_RVA, BASE + rdata_rva, grow);
    let mut rdata = noise(4096 + 256 * 16, 5);
    let ptrs_at = rdata.len();
    for s in &starts {
        rdata.extend_from_slice(&(BASE + TEXT_RVA + s).to_le_bytes());
    }
    let pdata_rva = align(rdata_rva as usize + rdata.len(), 0x1000) as u64;
    let mut pdata = Vec::new();
    for (i, s) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len() as u64);
        for rva in [
            TEXT_RVA + s,
            TEXT_RVA + end,
            rdata_rva + 16 * (i as u64 % 256),
        ] {
            pdata.extend_from_slice(&(rva as u32).to_le_bytes());
        }
    }
    let reloc_rva = align(pdata_rva as usize + pdata.len(), 0x1000) as u64;
    let mut reloc = Vec::new();
    let ptr_rvas: Vec<u64> = (0..funcs)
        .map(|i| rdata_rva + (ptrs_at + 8 * i) as u64)
        .collect();
    for page in ptr_rvas.chunk_by(|a, b| a >> 12 == b >> 12) {
        let mut block = Vec::new();
        for rva in page {
            block.extend_from_slice(&((10u16 << 12) | (rva & 0xfff) as u16).to_le_bytes());
        }
        if block.len() % 4 != 0 {
            block.extend_from_slice(&[0, 0]);
        }
        reloc.extend_from_slice(&((page[0] & !0xfff) as u32).to_le_bytes());
        reloc.extend_from_slice(&(8 + block.len() as u32).to_le_bytes());
        reloc.extend_from_slice(&block);
    }
    let image_size = align(reloc_rva as usize + reloc.len(), 0x1000);
    let secs: [(&[u8; 8], u64, &[u8], u32); 4] = [
        (b".text\0\0\0", TEXT_RVA, &text, 0x6000_0020),
        (b".rdata\0\0", rdata_rva, &rdata, 0x4000_0040),
        (b".pdata\0\0", pdata_rva, &pdata, 0x4000_0040),
        (b".reloc\0\0", reloc_rva, &reloc, 0x4200_0040),
    ];
    let mut f = vec![0u8; 0x400];
    put(&mut f, 0, b"MZ");
    put(&mut f, 0x3c, &0x40u32.to_le_bytes());
    put(&mut f, 0x40, b"PE\0\0");
    let coff = 0x44;
    put(&mut f, coff, &0x8664u16.to_le_bytes());
    put(&mut f, coff + 2, &(secs.len() as u16).to_le_bytes());
    put(&mut f, coff + 16, &240u16.to_le_bytes());
    put(&mut f, coff + 18, &0x2022u16.to_le_bytes());
    let opt = coff + 20;
    put(&mut f, opt, &0x20bu16.to_le_bytes());
    put(&mut f, opt + 24, &BASE.to_le_bytes());
    put(&mut f, opt + 32, &0x1000u32.to_le_bytes());
    put(&mut f, opt + 36, &0x200u32.to_le_bytes());
    put(&mut f, opt + 40, &6u16.to_le_bytes());
    put(&mut f, opt + 48, &6u16.to_le_bytes());
    put(&mut f, opt + 56, &(image_size as u32).to_le_bytes());
    put(&mut f, opt + 60, &0x400u32.to_le_bytes());
    put(&mut f, opt + 68, &2u16.to_le_bytes());
    put(&mut f, opt + 108, &16u32.to_le_bytes());
    // Exception and base relocation directories.
    put(&mut f, opt + 112 + 8 * 3, &(pdata_rva as u32).to_le_bytes());
    put(
        &mut f,
        opt + 116 + 8 * 3,
        &(pdata.len() as u32).to_le_bytes(),
    );
    put(&mut f, opt + 112 + 8 * 5, &(reloc_rva as u32).to_le_bytes());
    put(
        &mut f,
        opt + 116 + 8 * 5,
        &(reloc.len() as u32).to_le_bytes(),
    );
    let mut raw = 0x400usize;
    for (i, (name, rva, bytes, flags)) in secs.iter().enumerate() {
        let at = opt + 240 + 40 * i;
        let raw_len = align(bytes.len(), 0x200);
        put(&mut f, at, &name[..]);
        put(&mut f, at + 8, &(bytes.len() as u32).to_le_bytes());
        put(&mut f, at + 12, &(*rva as u32).to_le_bytes());
        put(&mut f, at + 16, &(raw_len as u32).to_le_bytes());
        put(&mut f, at + 20, &(raw as u32).to_le_bytes());
        put(&mut f, at + 36, &flags.to_le_bytes());
        put(&mut f, raw, bytes);
        raw += raw_len;
        f.resize(raw, 0);
    }
    f
}

/// Round trip with and without the transform; returns (transform patch, bytes-only
/// patch) sizes after checking both apply to `new` exactly.
fn both_ways(old: &[u8], new: &[u8]) -> (usize, usize, delta::DiffReport) {
    let (with, report) = diff(old, new, true);
    let (without, plain) = diff(old, new, false);
    assert!(plain.transform.is_none());
    assert_eq!(version(&with), 2, "an executable pair gets the transform");
    assert_eq!(version(&without), 1, "--no-transform writes version 1");
    assert_eq!(
        apply(old, &with).unwrap(),
        new,
        "version 2 patch round trip"
    );
    assert_eq!(
        apply(old, &without).unwrap(),
        new,
        "version 1 patch round trip"
    );
    (with.len(), without.len(), report)
}

/// Round trips both ways, then checks the transform report: at least `refs`
/// references found, `tables` table references predicted, nine in ten predictions exact
/// in code and in tables, and the patch under half the bytes-only one.
fn assert_transform_wins(old: &[u8], new: &[u8], refs: u64, tables: u64) {
    let (with, without, report) = both_ways(old, new);
    let t = report.transform.expect("transform report");
    assert!(t.refs >= refs, "{} references found", t.refs);
    assert!(t.predicted_right * 10 > t.predicted * 9, "code: {t:?}");
    assert!(
        t.table_predicted >= tables && t.table_predicted_right * 10 > t.table_predicted * 9,
        "tables: {t:?}"
    );
    assert!(
        with * 2 < without,
        "transform patch {with} bytes, bytes-only {without}"
    );
}

#[test]
fn elf_code_that_moved_costs_a_fraction_of_the_bytes_only_patch() {
    let (old, new) = (elf(400, 0), elf(400, 3000));
    assert!(
        exe::Layout::parse(&old).is_some(),
        "the generated ELF parses"
    );
    // Two addresses per relative relocation (offset and addend), 400 of them.
    assert_transform_wins(&old, &new, 5_000, 700);
}

#[test]
fn pe_code_that_moved_costs_a_fraction_of_the_bytes_only_patch() {
    let (old, new) = (pe(400, 0), pe(400, 3000));
    assert!(
        exe::Layout::parse(&old).is_some(),
        "the generated PE parses"
    );
    // Three RVAs per .pdata entry and a DIR64 pointer per function, 400 functions.
    assert_transform_wins(&old, &new, 5_000, 1_400);
}

/// A tar archive (ustar, as `tar --sort=name` writes) of `members`.
fn tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn executables_inside_a_tar_are_transformed_each_with_its_own_addresses() {
    let text = |seed| noise(20_000, seed);
    let old = tar(&[
        ("pkg/README", text(1)),
        ("pkg/a.so", elf(300, 0)),
        ("pkg/b.dll", pe(200, 0)),
        ("pkg/c.so", elf(150, 0)),
    ]);
    let new = tar(&[
        ("pkg/README", text(1)),
        ("pkg/a.so", elf(300, 2000)),
        ("pkg/b.dll", pe(200, 1500)),
        ("pkg/c.so", elf(150, 900)),
    ]);
    let image = exe::Image::parse(&old).expect("the tar's executables");
    assert_eq!(image.parts.len(), 3, "three executable members");
    let (with, without, report) = both_ways(&old, &new);
    let t = report.transform.expect("transform report");
    // Tables: two addresses per relocation in the ELF members (300 + 150), three RVAs
    // and a pointer per function in the PE member (200).
    assert!(
        t.predicted_right * 10 > t.predicted * 9
            && t.table_predicted >= 1600
            && t.table_predicted_right * 10 > t.table_predicted * 9,
        "{t:?}"
    );
    assert!(
        with * 2 < without,
        "transform patch {with} bytes, bytes-only {without}"
    );
    // A tar without executables gets no transform.
    let plain = tar(&[("a.txt", text(3)), ("b.txt", text(4))]);
    assert!(exe::Image::parse(&plain).is_none());
}

/// `elf` (from `elf()`) with `bytes` inserted into `.text` at file offset `at` and the
/// headers moved to match, but no reference in the code updated.
fn splice_code(elf: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut v = elf.to_vec();
    v.splice(at..at, bytes.iter().copied());
    let n = bytes.len() as u64;
    let u64_at = |v: &[u8], i: usize| u64::from_le_bytes(v[i..i + 8].try_into().unwrap());
    let shoff = u64_at(&v, 40) + n;
    put(&mut v, 40, &shoff.to_le_bytes());
    for i in 1..6 {
        let e = shoff as usize + 64 * i;
        let off = u64_at(&v, e + 24);
        if off > at as u64 {
            put(&mut v, e + 24, &(off + n).to_le_bytes());
        }
        if i == 1 {
            let size = u64_at(&v, e + 32) + n;
            put(&mut v, e + 32, &size.to_le_bytes());
        }
    }
    v
}

/// A zip archive of `members`, every entry stored (as APKs store native libraries).
fn zip(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        w.start_file(*name, o).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn executables_stored_in_a_zip_are_transformed() {
    let old = zip(&[
        ("lib/x86_64/liba.so", elf(300, 0)),
        ("assets/data", noise(30_000, 2)),
        ("lib/x86_64/b.dll", pe(200, 0)),
    ]);
    let new = zip(&[
        ("lib/x86_64/liba.so", elf(300, 2500)),
        ("assets/data", noise(30_000, 2)),
        ("lib/x86_64/b.dll", pe(200, 1000)),
    ]);
    assert_eq!(
        exe::Image::parse(&old)
            .expect("the zip's executables")
            .parts
            .len(),
        2
    );
    let (with, without, report) = both_ways(&old, &new);
    let t = report.transform.expect("transform report");
    assert!(
        t.table_predicted >= 1200 && t.table_predicted_right * 10 > t.table_predicted * 9,
        "{t:?}"
    );
    assert!(
        with * 2 < without,
        "transform patch {with} bytes, bytes-only {without}"
    );
}

#[test]
fn an_executable_whose_references_did_not_move_is_left_unpredicted() {
    // Member b.so's new version has bytes spliced into its code with no reference
    // updated (as a byte-level edit would): predicting its references would get the
    // ones across the splice wrong, so the encoder leaves that member's references as
    // they are, and says so; a.so is predicted as usual.
    let b_old = elf(200, 0);
    let b_new = splice_code(&b_old, 0x1000 + 60_000, &noise(700, 5));
    assert!(
        exe::Image::parse(&b_new).is_some(),
        "the edited ELF still parses"
    );
    let old = tar(&[("a.so", elf(300, 0)), ("b.so", b_old)]);
    let new = tar(&[("a.so", elf(300, 2000)), ("b.so", b_new)]);
    let (patch, report) = diff(&old, &new, true);
    assert_eq!(apply(&old, &patch).unwrap(), new);
    let t = report.transform.expect("transform report");
    assert_eq!((t.executables, t.executables_skipped), (2, 1), "{t:?}");
}

#[test]
fn ops_longer_than_apply_batches_predict_across_the_split() {
    // A 6 MiB .text copied by ops longer than apply's 1 MiB batches: references that
    // straddle a batch boundary are predicted from bytes read separately.
    let (old, new) = (elf(12_000, 0), elf(12_000, 64));
    let o = DiffOptions {
        block_size: 16 << 20,
        ..opts()
    };
    let mut patch = Vec::new();
    delta::diff(&old.clone(), &new.clone(), &mut patch, &o, &|_| {}).unwrap();
    assert_eq!(version(&patch), 2);
    assert_eq!(apply(&old, &patch).unwrap(), new);
}

#[test]
fn an_executables_references_are_kept_until_its_last_op_has_been_applied() {
    // Apply finds the references of the executables the first block copies from before
    // it starts, any other's before the first op that copies from it, and drops each
    // executable's after its last op. Here the small member is first copied from in
    // a later 2 MiB block than the first, so its references are found mid-apply.
    let old = tar(&[("big.so", elf(12_000, 0)), ("small.so", elf(300, 0))]);
    let new = tar(&[("big.so", elf(12_000, 64)), ("small.so", elf(300, 500))]);
    assert_eq!(exe::Image::parse(&old).expect("members").parts.len(), 2);
    let o = DiffOptions {
        block_size: 2 << 20,
        ..opts()
    };
    let mut patch = Vec::new();
    let report = delta::diff(&old.clone(), &new.clone(), &mut patch, &o, &|_| {}).unwrap();
    let t = report.transform.expect("transform report");
    assert_eq!(t.executables - t.executables_skipped, 2, "{t:?}");
    assert_eq!(apply(&old, &patch).unwrap(), new);
}

#[test]
fn non_executables_and_mixed_pairs_get_version_1() {
    let old = noise(300_000, 3);
    let mut new = old.clone();
    new.splice(1000..1000, noise(500, 4));
    let (p, r) = diff(&old, &new, true);
    assert_eq!(version(&p), 1);
    assert!(r.transform.is_none());
    // An executable replaced by something else: no layout on one side.
    let (p, _) = diff(&elf(50, 0), &new, true);
    assert_eq!(version(&p), 1);
    assert_eq!(apply(&elf(50, 0), &p).unwrap(), new);
}

#[test]
fn damaged_transform_patches_are_errors_never_wrong_output() {
    let (old, new) = (elf(200, 0), elf(200, 500));
    let (patch, _) = diff(&old, &new, true);
    for cut in (0..patch.len()).step_by(61) {
        assert!(apply(&old, &patch[..cut]).is_err(), "truncated at {cut}");
    }
    let mut rejected = 0;
    // Every byte: the header, the transform section and the blocks.
    let tried = patch.len();
    for i in 0..tried {
        let mut bad = patch.clone();
        bad[i] ^= 0x21;
        match apply(&old, &bad) {
            Err(_) => rejected += 1,
            Ok(out) => assert_eq!(out, new, "corruption at {i} gave a wrong result"),
        }
    }
    // Only informational header fields (zstd level, memory limit) may be harmless.
    assert!(
        rejected + 40 > tried,
        "only {rejected} of {tried} corruptions rejected"
    );
    // A version 2 patch against an old that is not an executable: the old's hash is
    // checked first, so this is a wrong old.
    let other = noise(old.len(), 9);
    assert!(matches!(
        apply(&other, &patch),
        Err(delta::DeltaError::WrongOld(_))
    ));
}

#[test]
fn predicting_an_op_in_pieces_is_predicting_it_whole() {
    // Apply predicts long ops in batches; a reference split by a batch edge must come
    // out as it does when the op is predicted in one piece (as diff does).
    let (old, new) = (elf(300, 0), elf(300, 500));
    let (image, tables) = exe::Image::parse_with_tables(&old).unwrap();
    let refs = exe::find_refs(&old, &image, &tables).unwrap();
    let half = 0x1000 + old.len() as u64 / 3;
    let p = exe::Predictor::new(
        image,
        refs,
        exe::Image::parse(&new).unwrap(),
        exe::OffsetMap::from_copies(
            vec![(0, 0, half), (half, half + 500, old.len() as u64 - half)],
            256,
        ),
        Vec::new(),
    );
    let (op_old, op_len, op_new) = (0x1000u64, 0x8000u64, 0x1000u64);
    let base = &old[op_old as usize..(op_old + op_len) as usize];
    let mut whole = base.to_vec();
    let n = p
        .rewrite(
            base,
            &mut whole,
            op_old,
            op_old,
            op_len,
            op_new,
            &mut |_| unreachable!(),
            None,
        )
        .unwrap();
    assert!(n[0] > 1000, "{n:?} predicted");
    assert_ne!(
        whole,
        old[op_old as usize..(op_old + op_len) as usize],
        "predictions change bytes"
    );
    let mut straddled = 0;
    for cut in op_old + 1..op_old + 4000 {
        let at = (cut - op_old) as usize;
        // The first piece's output starts as its old bytes (it becomes them predicted),
        // the second's as a diff (it gets the predictions' differences added).
        let mut a = base[..at].to_vec();
        let diff: Vec<u8> = (0..base.len() - at).map(|i| (i * 7) as u8).collect();
        let mut b = diff.clone();
        let mut read = |f: u64| {
            straddled += 1;
            let mut v = [0u8; 8];
            v.copy_from_slice(&old[f as usize..f as usize + 8]);
            Ok(v)
        };
        let mut piece = |from: u64, bytes: &[u8], out: &mut [u8]| {
            p.rewrite(bytes, out, from, op_old, op_len, op_new, &mut read, None)
                .unwrap()
        };
        piece(op_old, &base[..at], &mut a);
        piece(cut, &base[at..], &mut b);
        assert_eq!(a, whole[..at], "first piece, cut at {cut:#x}");
        let want: Vec<u8> = (at..base.len())
            .map(|i| whole[i].wrapping_sub(base[i]).wrapping_add(diff[i - at]))
            .collect();
        assert_eq!(b, want, "second piece, cut at {cut:#x}");
    }
    assert!(straddled > 1000, "{straddled} fields read across a cut");
}

#[test]
fn a_code_scan_split_in_two_finds_what_one_scan_finds() {
    // Generated code and random bytes (dense with false candidates, so the two scans
    // start out of step), split at every offset of a stretch and at spread points.
    let old = elf(3_000, 0);
    let image = exe::Image::parse(&old).unwrap();
    let layout = &image.parts[0];
    let text = *layout.sections.iter().find(|s| s.exec).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        })
        .collect();
    // Every 256 bytes, 32 of `8B 05 8B 05 …`: a RIP-relative mov from either even
    // position, so scans that enter it at different positions stay out of step to its
    // end (where each may stop inside the other's last instruction).
    for run in noise.chunks_mut(256) {
        for (i, b) in run[..32].iter_mut().enumerate() {
            *b = if i % 2 == 0 { 0x8b } else { 0x05 };
        }
    }
    let section = exe::Section {
        off: 0,
        file_len: noise.len() as u64,
        va: 0x1000,
        // Zero-filled beyond the file: most random displacements land inside.
        mem_len: 1 << 31,
        exec: true,
    };
    let noise_layout = exe::Layout::new(vec![section], 0).unwrap();
    let mut out_of_step = 0;
    for (bytes, layout, s) in [
        (&old[..], layout, text),
        (&noise[..], &noise_layout, section),
    ] {
        let whole = exe::code_refs(bytes, layout, 1 << 20).unwrap();
        assert!(
            whole.fields.len() > 5_000,
            "{} references",
            whole.fields.len()
        );
        let mid = s.off + s.file_len / 2;
        let points = (mid..mid + 64).chain((1..16).map(|k| s.off + s.file_len * k / 16));
        for split in points {
            let split_refs = exe::code_refs_split(bytes, layout, 4096, split).unwrap();
            assert_eq!(split_refs, whole, "split at {split:#x}");
            // How often the second scan starts inside an instruction the first takes.
            out_of_step += usize::from(whole.fields.iter().any(|&f| {
                let f = u64::from(f);
                f < split && split < f + 4
            }));
        }
    }
    assert!(
        out_of_step > 10,
        "{out_of_step} splits inside an instruction"
    );
}

#[test]
fn reference_scan_does_not_depend_on_read_pieces() {
    // Code of more than one 1 MiB read piece, dense with candidates: the pieces' edges
    // must not change what is found (apply and diff read differently).
    let old = elf(6_000, 0);
    let (image, tables) = exe::Image::parse_with_tables(&old).unwrap();
    let refs = exe::find_refs(&old, &image, &tables).unwrap();
    let layout = &image.parts[0];
    let text = layout.sections.iter().find(|s| s.exec).unwrap();
    assert!(text.file_len > 2 << 20, "code spans pieces");
    let small = exe::code_refs(&old, layout, 4096).unwrap();
    let whole = exe::code_refs(&old, layout, 64 << 20).unwrap();
    assert_eq!(small, whole);
    assert!(
        whole.fields.len() > 50_000,
        "{} code references",
        whole.fields.len()
    );
    let code: Vec<u32> = refs
        .fields
        .iter()
        .zip(&refs.kinds)
        .filter(|(_, &k)| k < exe::K_PCREL32)
        .map(|(&f, _)| f)
        .collect();
    assert_eq!(code, whole.fields);
}

/// A file-system image of `size` bytes: `fill`, with `files` written over it at 4 KiB
/// boundaries (where ext4 and the other file systems start a file's data).
fn fs_image(files: &[Vec<u8>], fill: &[u8]) -> Vec<u8> {
    let mut img = fill.to_vec();
    let mut at = 64 << 10;
    for f in files {
        img[at..at + f.len()].copy_from_slice(f);
        at = align(at + f.len() + 10_000, 4096);
    }
    img
}

#[test]
fn executables_in_a_file_system_image_are_transformed_in_one_piece_and_in_windows() {
    let files = |g: usize| vec![elf(400, 2 * g), pe(300, g), elf(200, 0)];
    // Small: diffed in one piece.
    let fill = noise(3 << 20, 21);
    let (old, new) = (fs_image(&files(0), &fill), fs_image(&files(700), &fill));
    let image = exe::Image::parse(&old).expect("the image's executables");
    assert_eq!(image.parts.len(), 3, "{:?}", image.parts);
    assert!(image.parts.iter().all(|p| p.start % 4096 == 0));
    let (with, without, report) = both_ways(&old, &new);
    let t = report.transform.expect("transform report");
    // The unchanged ELF gains nothing from predicting: left out.
    assert_eq!((t.executables, t.executables_skipped), (3, 1), "{t:?}");
    assert!(
        with * 2 < without,
        "one piece: {with} bytes, bytes-only {without}"
    );

    // 24 MiB under a 200 MiB limit: windowed (as a 600 MB image is under 2 GiB).
    let fill = noise(24 << 20, 22);
    let (old, new) = (fs_image(&files(0), &fill), fs_image(&files(700), &fill));
    let o = |exe_transform| DiffOptions {
        memory_limit: 200 << 20,
        block_size: 1 << 20,
        exe_transform,
        ..opts()
    };
    let mut with = Vec::new();
    let report = delta::diff(&old, &new, &mut with, &o(true), &|_| {}).unwrap();
    assert!(report.windowed && report.segments > 1, "{report:?}");
    let t = report.transform.expect("transform in windows");
    assert_eq!((t.executables, t.executables_skipped), (3, 1), "{t:?}");
    assert!(
        t.predicted_right * 10 > t.predicted * 9 && t.table_predicted > 1000,
        "{t:?}"
    );
    assert_eq!(version(&with), 2);
    assert_eq!(
        apply(&old, &with).unwrap(),
        new,
        "windowed version 2 round trip"
    );
    let mut without = Vec::new();
    delta::diff(&old, &new, &mut without, &o(false), &|_| {}).unwrap();
    assert_eq!(version(&without), 1);
    assert!(
        with.len() * 2 < without.len(),
        "windowed: {} bytes, bytes-only {}",
        with.len(),
        without.len()
    );
}

/// An ext4 image of `files` (name, bytes), built as OS image builders do (`mke2fs -d`,
/// which leaves each file's all-zero blocks out as holes), reproducibly.
fn ext4_image(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for (name, bytes) in files {
        std::fs::write(root.join(name), bytes).unwrap();
    }
    let img = dir.path().join("fs.img");
    let uuid = "22222222-3333-4444-5555-666666666666";
    let out = std::process::Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", "0")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-U", uuid])
        .args(["-E", &format!("root_owner=0:0,hash_seed={uuid}")])
        .arg("-d")
        .arg(&root)
        .arg(&img)
        .arg("16M")
        .output()
        .expect("mke2fs (e2fsprogs) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(img).unwrap()
}

#[test]
fn executables_in_an_ext4_image_are_found_through_its_extents_holes_and_all() {
    // Three zero blocks in a.so's code: mke2fs leaves them out, so everything after
    // them sits 12 KiB earlier in the image than the ELF's headers say.
    let hole = |mut e: Vec<u8>| {
        e[0x11000..0x14000].fill(0);
        e
    };
    let files = |g: usize| {
        vec![
            ("a.so", hole(elf(400, 2 * g))),
            ("b.dll", pe(300, g)),
            ("c.so", elf(200, 0)),
            ("README", noise(50_000, 31)),
        ]
    };
    let (old, new) = (ext4_image(&files(0)), ext4_image(&files(700)));
    let image = exe::Image::parse(&old).expect("the image's executables");
    assert_eq!(image.parts.len(), 3, "{:?}", image.parts);
    // a.so's .text is split around the hole: more sections than in the file itself.
    let in_file = exe::Layout::parse(&hole(elf(400, 0)))
        .unwrap()
        .sections
        .len();
    assert!(
        image.parts.iter().any(|p| p.sections.len() > in_file),
        "no section split by the hole: {:?}",
        image.parts
    );
    let (with, without, report) = both_ways(&old, &new);
    let t = report.transform.expect("transform report");
    assert_eq!((t.executables, t.executables_skipped), (3, 1), "{t:?}");
    assert!(
        t.table_predicted >= 1500 && t.table_predicted_right * 10 > t.table_predicted * 9,
        "{t:?}"
    );
    assert!(
        with * 2 < without,
        "ext4: {with} bytes, bytes-only {without}"
    );
}

/// A transform section may hold at most `MAX_TRANSFORM_OPS` ops: apply builds its
/// offset map from every one (24 bytes each), and the section's 64 MiB could hold 22
/// million. One more is a format error before any of them is read into memory.
#[test]
fn a_transform_section_past_its_op_bound_is_refused() {
    use delta::format;
    let (old, new) = (elf(300, 0), elf(300, 40));
    let (patch, _) = diff(&old, &new, true);
    assert_eq!(version(&patch), 2);
    assert_eq!(apply(&old, &patch).unwrap(), new);
    let mut rest = &patch[format::HEADER_LEN..];
    let section = delta::apply::read_transform_section(&mut rest).unwrap();
    let blocks = &patch[format::HEADER_LEN + section.bytes as usize..];
    // The section again, its first block's control stream now the bound's worth of
    // empty ops and one more (within a block's 8 MiB of control).
    let encode = |ctrls: &[Vec<u8>]| {
        let s = delta::encode::transform_section(&section.new, &section.skip, ctrls);
        let z = zstd::bulk::compress(&s, 3).unwrap();
        let mut p = patch[..format::HEADER_LEN].to_vec();
        p.extend_from_slice(&(z.len() as u32).to_le_bytes());
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(&z);
        p.extend_from_slice(blocks);
        p
    };
    let mut ctrls: Vec<Vec<u8>> = section
        .ctrl_at
        .windows(2)
        .map(|w| section.ctrl[w[0]..w[1]].to_vec())
        .collect();
    // Unchanged, the section encodes to a patch that applies (the rebuild is faithful).
    assert_eq!(apply(&old, &encode(&ctrls)).unwrap(), new);
    let empty = format::Op {
        old_pos: 0,
        diff_len: 0,
        extra_len: 0,
    };
    ctrls[0] = format::encode_ctrl(&vec![empty; format::MAX_TRANSFORM_OPS as usize + 1]);
    assert!(ctrls[0].len() <= format::MAX_CTRL_LEN as usize);
    let err = apply(&old, &encode(&ctrls)).unwrap_err();
    assert!(err.to_string().contains("transform op count"), "{err}");
    // Every block holds an op, so a section claiming more blocks than the op bound is
    // refused before it keeps a position per block (here with 3 MiB of section besides,
    // so the claim is within its length).
    let mut many = vec![Vec::new(); format::MAX_TRANSFORM_OPS as usize + 1];
    many[0] = vec![7; 3 << 20];
    let err = apply(&old, &encode(&many)).unwrap_err();
    assert!(err.to_string().contains("transform block count"), "{err}");
}
