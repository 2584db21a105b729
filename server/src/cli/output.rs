//! How the shell prints results: rows arrive as text (the embedded database's Arrow
//! batches are formatted as they come; a server sends text), and a printer either
//! streams them (CSV) or keeps what a capped table shows: the first rows and a ring
//! of the last ones, never the whole result.

use std::collections::VecDeque;
use std::io::{self, Write};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// One row of a result, each value as text (a NULL is empty, as Arrow prints it).
pub(super) type TextRow = Vec<String>;

/// How many rows a table shows: `None` shows all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowCap(pub(super) Option<usize>);

impl RowCap {
    /// DuckDB's shell default: 40 rows, the first 20 and the last 20.
    pub(super) const DEFAULT: RowCap = RowCap(Some(40));

    /// How many first rows, and how many last rows, a longer result shows.
    fn head_and_tail(self) -> (usize, usize) {
        match self.0 {
            None => (usize::MAX, 0),
            Some(cap) => (cap.div_ceil(2), cap / 2),
        }
    }
}

/// Formats the rows of `batch` as text.
pub(super) fn text_rows(batch: &RecordBatch) -> Result<Vec<TextRow>, String> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((0..batch.num_rows())
        .map(|row| {
            formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect()
        })
        .collect())
}

/// A table that keeps the first rows and a ring of the last ones, up to its cap, and
/// counts the rest.
#[derive(Debug)]
pub(super) struct CappedTable {
    columns: Vec<String>,
    head: Vec<TextRow>,
    tail: VecDeque<TextRow>,
    head_len: usize,
    tail_len: usize,
    total: u64,
}

impl CappedTable {
    pub(super) fn new(columns: Vec<String>, cap: RowCap) -> Self {
        let (head_len, tail_len) = cap.head_and_tail();
        CappedTable {
            columns,
            head: Vec::new(),
            tail: VecDeque::new(),
            head_len,
            tail_len,
            total: 0,
        }
    }

    pub(super) fn push(&mut self, row: TextRow) {
        self.total += 1;
        if self.head.len() < self.head_len {
            self.head.push(row);
        } else if self.tail_len > 0 {
            if self.tail.len() == self.tail_len {
                self.tail.pop_front();
            }
            self.tail.push_back(row);
        }
    }

    /// The rows shown, with `None` where the hidden ones were left out.
    fn shown(&self) -> Vec<Option<&TextRow>> {
        let hidden = self.total > (self.head.len() + self.tail.len()) as u64;
        let mut rows: Vec<Option<&TextRow>> = self.head.iter().map(Some).collect();
        if hidden {
            rows.push(None);
        }
        rows.extend(self.tail.iter().map(Some));
        rows
    }

    /// Draws the table as Arrow's pretty printer does, then `(N rows)` or, when rows
    /// were left out, `(N rows, M shown)`.
    pub(super) fn render(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows = self.shown();
        let mut widths: Vec<usize> = self.columns.iter().map(|c| width(c)).collect();
        for row in rows.iter().flatten() {
            for (w, value) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(width(value));
            }
        }
        let rule: String = widths
            .iter()
            .map(|w| format!("+{}", "-".repeat(w + 2)))
            .chain(std::iter::once("+".to_string()))
            .collect();
        let line = |out: &mut dyn Write, values: &mut dyn Iterator<Item = &str>| {
            for (value, w) in values.zip(&widths) {
                write!(out, "| {value}{} ", " ".repeat(w - width(value)))?;
            }
            writeln!(out, "|")
        };
        writeln!(out, "{rule}")?;
        line(out, &mut self.columns.iter().map(String::as_str))?;
        writeln!(out, "{rule}")?;
        for row in &rows {
            match row {
                Some(row) => line(out, &mut row.iter().map(String::as_str))?,
                None => line(out, &mut widths.iter().map(|_| "…"))?,
            }
        }
        writeln!(out, "{rule}")?;
        let shown = rows.iter().flatten().count() as u64;
        let plural = if self.total == 1 { "" } else { "s" };
        if shown < self.total {
            writeln!(out, "({} row{plural}, {shown} shown)", self.total)
        } else {
            writeln!(out, "({} row{plural})", self.total)
        }
    }
}

/// Characters, which is what a terminal column counts for most text.
fn width(text: &str) -> usize {
    text.chars().count()
}

/// Writes rows as CSV as they arrive (RFC 4180 quoting), the header first.
pub(super) fn write_csv_row(out: &mut dyn Write, row: &[String]) -> io::Result<()> {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            write!(out, ",")?;
        }
        if value.contains([',', '"', '\n', '\r']) {
            write!(out, "\"{}\"", value.replace('"', "\"\""))?;
        } else {
            write!(out, "{value}")?;
        }
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(total: usize, cap: RowCap) -> (CappedTable, String) {
        let mut t = CappedTable::new(vec!["i".into(), "sq".into()], cap);
        for i in 0..total {
            t.push(vec![i.to_string(), (i * i).to_string()]);
        }
        let mut out = Vec::new();
        t.render(&mut out).unwrap();
        (t, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_capped_table_shows_the_first_and_last_rows() {
        // 10 rows over a cap of 5: the first ceil(5/2) = 3 and the last 2, by hand.
        let (t, text) = table(10, RowCap(Some(5)));
        assert_eq!(t.total, 10);
        assert_eq!(
            text,
            "\
+---+----+
| i | sq |
+---+----+
| 0 | 0  |
| 1 | 1  |
| 2 | 4  |
| … | …  |
| 8 | 64 |
| 9 | 81 |
+---+----+
(10 rows, 5 shown)
"
        );
        // Exactly the cap: every row, no gap.
        let (_, text) = table(5, RowCap(Some(5)));
        assert!(
            text.contains("| 4 | 16 |\n+") && !text.contains('…'),
            "{text}"
        );
        assert!(text.ends_with("(5 rows)\n"));
        // No cap, and the default of 40 over 100 rows: 0..19 then 80..99.
        let (_, text) = table(100, RowCap(None));
        assert!(text.ends_with("(100 rows)\n") && !text.contains('…'));
        let (t, text) = table(100, RowCap::DEFAULT);
        let shown: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("| ")).collect();
        assert_eq!(shown.len(), 1 + 20 + 1 + 20);
        assert!(shown[20].starts_with("19 ") && shown[22].starts_with("80 "));
        assert_eq!((t.head.len(), t.tail.len()), (20, 20));
        assert!(text.ends_with("(100 rows, 40 shown)\n"));
        let (_, text) = table(1, RowCap(Some(0)));
        assert!(text.ends_with("(1 row, 0 shown)\n"), "{text}");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut out = Vec::new();
        write_csv_row(&mut out, &["a".into(), "b,c".into(), "say \"hi\"".into()]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,\"b,c\",\"say \"\"hi\"\"\"\n"
        );
    }
}
