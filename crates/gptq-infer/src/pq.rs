//! Parquet calibration files (feature `parquet`): one string column read
//! with the parquet crate's column reader (no arrow).
//!
//! Hugging Face dataset files are written by pyarrow, snappy-compressed by
//! default; this build also reads gzip and uncompressed column chunks.

use crate::{Error, Result};
use parquet::basic::{Compression, ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnDescriptor;
use std::path::Path;

/// Rows read per batch.
const BATCH: usize = 4096;

fn is_string_column(c: &ColumnDescriptor) -> bool {
    c.physical_type() == PhysicalType::BYTE_ARRAY
        && c.max_rep_level() == 0
        && (matches!(c.logical_type_ref(), Some(LogicalType::String))
            || c.converted_type() == ConvertedType::UTF8)
}

fn codec_supported(c: Compression) -> bool {
    matches!(
        c,
        Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::GZIP(_)
    )
}

/// Reads the string column `field` (a top-level column, or a dotted path)
/// of a parquet file; null rows are skipped.
pub fn string_column(path: &Path, field: &str) -> Result<Vec<String>> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Input(format!("calibration file {name}: not found")),
        _ => Error::Input(format!("calibration file {name}: {e}")),
    })?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::Input(format!("{name}: not a readable parquet file: {e}")))?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let columns: Vec<std::sync::Arc<ColumnDescriptor>> = (0..schema.num_columns())
        .map(|i| schema.column(i))
        .collect();
    let strings: Vec<String> = columns
        .iter()
        .filter(|c| is_string_column(c))
        .map(|c| c.path().string())
        .collect();
    let listed = if strings.is_empty() {
        "the file has no string column".to_string()
    } else {
        format!("string columns: {}", strings.join(", "))
    };
    let idx = columns
        .iter()
        .position(|c| c.path().string() == field)
        .ok_or_else(|| {
            Error::Input(format!(
                "{name}: no column `{field}` ({listed}; choose one with --text-field)"
            ))
        })?;
    let col = &columns[idx];
    if !is_string_column(col) {
        let what = match col.logical_type_ref() {
            Some(l) => format!("{:?} {l:?}", col.physical_type()),
            None => format!("{:?}", col.physical_type()),
        };
        let what = if col.max_rep_level() > 0 {
            format!("a list of {what}")
        } else {
            what
        };
        return Err(Error::Input(format!(
            "{name}: column `{field}` is not a string column but {what} ({listed}; choose one with --text-field)"
        )));
    }
    let mut rows = Vec::with_capacity(meta.file_metadata().num_rows().max(0) as usize);
    let mut nulls = 0usize;
    let bad = |e: parquet::errors::ParquetError| Error::Input(format!("{name}: {e}"));
    for rg in 0..meta.num_row_groups() {
        let codec = meta.row_group(rg).column(idx).compression();
        if !codec_supported(codec) {
            return Err(Error::Input(format!(
                "{name}: column `{field}` is compressed with {codec}, which this build cannot read \
                 (it reads snappy, gzip and uncompressed parquet); re-save the file with snappy"
            )));
        }
        let group = reader.get_row_group(rg).map_err(bad)?;
        let ColumnReader::ByteArrayColumnReader(mut cr) =
            group.get_column_reader(idx).map_err(bad)?
        else {
            return Err(Error::Input(format!(
                "{name}: column `{field}` is not a byte-array column"
            )));
        };
        let (mut defs, mut values) = (Vec::new(), Vec::new());
        loop {
            defs.clear();
            values.clear();
            let (records, read, _levels) = cr
                .read_records(BATCH, Some(&mut defs), None, &mut values)
                .map_err(bad)?;
            if records == 0 {
                break;
            }
            nulls += records - read;
            for v in &values {
                let s = v.as_utf8().map_err(|_| {
                    Error::Input(format!(
                        "{name}: column `{field}` row {}: not UTF-8",
                        rows.len() + nulls
                    ))
                })?;
                rows.push(s.to_string());
            }
        }
    }
    if nulls > 0 {
        tracing::warn!("{name}: skipped {nulls} null rows of column `{field}`");
    }
    Ok(rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parquet::basic::GzipLevel;
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    /// Writes a parquet file with an optional string column `text` (None =
    /// null), a required int column `n` and a binary column `raw`, in two
    /// row groups.
    pub(crate) fn write_fixture(path: &Path, rows: &[Option<&str>], codec: Compression) {
        let schema = Arc::new(
            parse_message_type(
                "message schema { OPTIONAL BYTE_ARRAY text (UTF8); REQUIRED INT32 n; \
                 REQUIRED BYTE_ARRAY raw; }",
            )
            .unwrap(),
        );
        let props = Arc::new(WriterProperties::builder().set_compression(codec).build());
        let file = std::fs::File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
        let half = rows.len() / 2;
        for part in [&rows[..half], &rows[half..]] {
            let mut rg = w.next_row_group().unwrap();
            let vals: Vec<ByteArray> = part.iter().flatten().map(|s| ByteArray::from(*s)).collect();
            let defs: Vec<i16> = part.iter().map(|r| r.is_some() as i16).collect();
            let mut c = rg.next_column().unwrap().unwrap();
            c.typed::<ByteArrayType>()
                .write_batch(&vals, Some(&defs), None)
                .unwrap();
            c.close().unwrap();
            let mut c = rg.next_column().unwrap().unwrap();
            let ns: Vec<i32> = (0..part.len() as i32).collect();
            c.typed::<Int32Type>().write_batch(&ns, None, None).unwrap();
            c.close().unwrap();
            let mut c = rg.next_column().unwrap().unwrap();
            let raw: Vec<ByteArray> = part.iter().map(|_| ByteArray::from(&b"\xff"[..])).collect();
            c.typed::<ByteArrayType>()
                .write_batch(&raw, None, None)
                .unwrap();
            c.close().unwrap();
            rg.close().unwrap();
        }
        w.close().unwrap();
    }

    #[test]
    fn reads_string_column_with_snappy_and_gzip() {
        let d = tempfile::tempdir().unwrap();
        let rows = [
            Some(" = A = \n"),
            None,
            Some(""),
            Some("héllo\n"),
            Some("x"),
        ];
        for codec in [
            Compression::SNAPPY,
            Compression::GZIP(GzipLevel::default()),
            Compression::UNCOMPRESSED,
        ] {
            let p = d.path().join("t.parquet");
            write_fixture(&p, &rows, codec);
            let got = string_column(&p, "text").unwrap();
            assert_eq!(got, [" = A = \n", "", "héllo\n", "x"], "{codec}");
        }
    }

    #[test]
    fn missing_or_non_string_columns_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.parquet");
        write_fixture(&p, &[Some("a"), Some("b")], Compression::SNAPPY);
        let e = string_column(&p, "content").unwrap_err().to_string();
        assert!(
            e.contains("no column `content`")
                && e.contains("string columns: text")
                && e.contains("--text-field"),
            "{e}"
        );
        let e = string_column(&p, "n").unwrap_err().to_string();
        assert!(
            e.contains("`n` is not a string column") && e.contains("INT32"),
            "{e}"
        );
        let e = string_column(&p, "raw").unwrap_err().to_string();
        assert!(e.contains("`raw` is not a string column"), "{e}");
        let junk = d.path().join("junk.parquet");
        std::fs::write(&junk, "not parquet").unwrap();
        let e = string_column(&junk, "text").unwrap_err().to_string();
        assert!(e.contains("not a readable parquet file"), "{e}");
    }
}
