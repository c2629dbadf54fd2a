//! BSDIFF40 export, for stock `bspatch`: header "BSDIFF40", then bzip2-compressed control
//! (x, y, z triples as 8-byte sign-magnitude integers), diff and extra streams.
//! The three streams are compressed as they are produced; only compressed bytes are kept.

use std::io::Write;

use bzip2::write::BzEncoder;
use bzip2::Compression;

use super::format::Op;
use super::DeltaError;

fn offtout(x: i64) -> [u8; 8] {
    let mut b = x.unsigned_abs().to_le_bytes();
    if x < 0 {
        b[7] |= 0x80;
    }
    b
}

pub struct Writer<'a> {
    out: &'a mut dyn Write,
    new_size: u64,
    ctrl: BzEncoder<Vec<u8>>,
    diff: BzEncoder<Vec<u8>>,
    extra: BzEncoder<Vec<u8>>,
    /// Old position bspatch is at after the previous triple's diff (before its seek).
    pending: Option<(u64, u64)>,
    old_cursor: u64,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut dyn Write, new_size: u64) -> Self {
        let enc = || BzEncoder::new(Vec::new(), Compression::best());
        Writer {
            out,
            new_size,
            ctrl: enc(),
            diff: enc(),
            extra: enc(),
            pending: None,
            old_cursor: 0,
        }
    }

    fn triple(&mut self, x: u64, y: u64, z: i64) -> Result<(), DeltaError> {
        self.ctrl.write_all(&offtout(x as i64))?;
        self.ctrl.write_all(&offtout(y as i64))?;
        self.ctrl.write_all(&offtout(z))?;
        Ok(())
    }

    /// Adds ops (absolute old positions) with their diff and extra bytes.
    pub fn add(&mut self, ops: &[Op], diff: &[u8], extra: &[u8]) -> Result<(), DeltaError> {
        for op in ops {
            // The previous triple's seek lands exactly on this op's old position.
            match self.pending.take() {
                Some((x, y)) => {
                    let z = op.old_pos as i64 - self.old_cursor as i64;
                    self.triple(x, y, z)?;
                }
                None if op.old_pos != 0 => self.triple(0, 0, op.old_pos as i64)?,
                None => {}
            }
            self.pending = Some((op.diff_len, op.extra_len));
            self.old_cursor = op.old_pos + op.diff_len;
        }
        self.diff.write_all(diff)?;
        self.extra.write_all(extra)?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<u64, DeltaError> {
        if let Some((x, y)) = self.pending.take() {
            self.triple(x, y, 0)?;
        }
        let ctrl = self.ctrl.finish()?;
        let diff = self.diff.finish()?;
        let extra = self.extra.finish()?;
        self.out.write_all(b"BSDIFF40")?;
        self.out.write_all(&offtout(ctrl.len() as i64))?;
        self.out.write_all(&offtout(diff.len() as i64))?;
        self.out.write_all(&offtout(self.new_size as i64))?;
        self.out.write_all(&ctrl)?;
        self.out.write_all(&diff)?;
        self.out.write_all(&extra)?;
        self.out.flush()?;
        Ok(32 + (ctrl.len() + diff.len() + extra.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_magnitude_matches_bsdiff() {
        assert_eq!(offtout(5), [5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(offtout(-5), [5, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(offtout(256), [0, 1, 0, 0, 0, 0, 0, 0]);
    }
}
