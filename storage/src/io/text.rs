//! Shared by the text formats (CSV, Matrix Market): a buffered line reader that counts
//! lines, and the number formatting of the writers.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};

/// Read buffer for input files: large enough that a read is rarely a system call.
pub(super) const READ_BUFFER: usize = 1 << 20;

/// Reads a text file line by line into one reused buffer, counting 1-based lines.
#[derive(Debug)]
pub(super) struct LineReader {
    path: PathBuf,
    input: BufReader<File>,
    buf: Vec<u8>,
    line_no: u64,
}

impl LineReader {
    /// Opens `path` for reading.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| StorageError::io(path.display(), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(READ_BUFFER, file),
            buf: Vec::with_capacity(256),
            line_no: 0,
        })
    }

    /// The next line's 1-based number and text, without its `\n` or `\r\n` (and, on
    /// line 1, without a UTF-8 byte order mark), or `None` at the end of the file.
    pub(super) fn next_line(&mut self) -> Result<Option<(u64, &str)>> {
        self.buf.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| StorageError::io(self.path.display(), e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        let mut bytes = self.buf.as_slice();
        if let Some(b) = bytes.strip_suffix(b"\n") {
            bytes = b.strip_suffix(b"\r").unwrap_or(b);
        }
        if self.line_no == 1 {
            bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        }
        match std::str::from_utf8(bytes) {
            Ok(line) => Ok(Some((self.line_no, line))),
            Err(e) => Err(StorageError::bad_file(
                &self.path,
                self.line_no,
                format!(
                    "line is not valid UTF-8 (byte {} of the line)",
                    e.valid_up_to() + 1
                ),
            )),
        }
    }

    /// Number of the last line returned (0 before the first).
    pub(super) fn line_no(&self) -> u64 {
        self.line_no
    }

    /// The file being read.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// True for a line holding nothing but spaces and tabs.
pub(super) fn is_blank(line: &str) -> bool {
    line.bytes().all(|b| b == b' ' || b == b'\t')
}

/// Appends `v` in the shortest form that parses back to the same bits: plain decimals
/// where they are short, exponent form for very large and very small magnitudes (Rust's
/// `{}` would spell `1e300` with 301 digits), and `nan`, `inf`, `-inf`, which NumPy,
/// SciPy and Rust all read.
pub(super) fn push_f64(out: &mut Vec<u8>, v: f64) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = if v.is_nan() {
        out.write_all(b"nan")
    } else if v.is_infinite() {
        out.write_all(if v > 0.0 { b"inf" } else { b"-inf" })
    } else if v == 0.0 || (1e-5..1e16).contains(&v.abs()) {
        write!(out, "{v}")
    } else {
        write!(out, "{v:e}")
    };
}

/// Appends an unsigned integer.
pub(super) fn push_u64(out: &mut Vec<u8>, v: u64) {
    use std::io::Write as _;
    let _ = write!(out, "{v}");
}

/// `rows x cols`, the way every message names a shape.
pub(super) fn shape_str(shape: (u64, u64)) -> String {
    format!("{}x{}", shape.0, shape.1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may panic

    use super::*;

    #[test]
    fn numbers_round_trip_through_their_text() {
        let values = [
            0.0,
            1.0,
            -3.0,
            0.1,
            1.0 / 3.0,
            1e-300,
            -2.5e300,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            123456789012345680.0,
            1e-5,
            9007199254740992.0,
        ];
        for v in values {
            let mut out = vec![];
            push_f64(&mut out, v);
            let text = String::from_utf8(out).unwrap();
            assert!(text.len() <= 25, "{text} is not short");
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                v.to_bits(),
                "{text}"
            );
        }
        let mut out = vec![];
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, 2.0] {
            push_f64(&mut out, v);
            out.push(b' ');
        }
        assert_eq!(String::from_utf8(out).unwrap(), "nan inf -inf 1e300 2 ");
        // What readers accept: Rust's parser, any case.
        assert!("NaN".parse::<f64>().unwrap().is_nan());
        assert_eq!("-Infinity".parse::<f64>(), Ok(f64::NEG_INFINITY));
        assert!("1,5".parse::<f64>().is_err());
    }

    #[test]
    fn lines_lose_their_terminators_and_the_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.txt");
        std::fs::write(&path, "\u{feff}a,b\r\n\nlast").unwrap();
        let mut r = LineReader::open(&path).unwrap();
        assert_eq!(r.next_line().unwrap(), Some((1, "a,b")));
        assert_eq!(r.next_line().unwrap(), Some((2, "")));
        assert_eq!(r.next_line().unwrap(), Some((3, "last")));
        assert_eq!(r.line_no(), 3);
        assert_eq!(r.next_line().unwrap(), None);

        std::fs::write(&path, b"ok\nbad \xff\n").unwrap();
        let mut r = LineReader::open(&path).unwrap();
        r.next_line().unwrap();
        let err = r.next_line().unwrap_err().to_string();
        assert!(err.contains("l.txt:2: line is not valid UTF-8"), "{err}");
    }
}
