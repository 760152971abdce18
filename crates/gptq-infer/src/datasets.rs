//! Evaluation texts: named sets and files, joined the way the GPTQ
//! reference scripts join them.

use crate::{Error, Result};
use std::path::Path;

/// WikiText-2 raw test split (CC BY-SA 3.0), embedded: see `data/README.md`.
const WIKITEXT2_TEST: &str = include_str!("../../../data/wikitext2/wiki.test.raw");

/// Named evaluation sets this build carries.
pub const NAMED: &[&str] = &["wikitext2"];

/// Joins WikiText raw lines as `"\n\n".join(dataset['text'])` does on the HF
/// `wikitext-2-raw-v1` rows: each file line is a row (with its newline),
/// except whitespace-only lines, which are empty rows.
pub fn join_wikitext(raw: &str) -> String {
    let rows: Vec<&str> = raw
        .split_inclusive('\n')
        .map(|l| if l.trim().is_empty() { "" } else { l })
        .collect();
    rows.join("\n\n")
}

/// The evaluation text for `--dataset`: a named set or a file (`.txt` read
/// as is; `.jsonl` joins the `text` fields with "\n\n").
pub fn eval_text(spec: &str) -> Result<String> {
    match spec {
        "wikitext2" | "wikitext-2" | "wikitext" => return Ok(join_wikitext(WIKITEXT2_TEST)),
        _ => {}
    }
    let p = Path::new(spec);
    if !p.is_file() {
        return Err(Error::Input(format!(
            "dataset `{spec}`: not a named set ({}) and no such file",
            NAMED.join(", ")
        )));
    }
    let text = std::fs::read_to_string(p)
        .map_err(|e| Error::Input(format!("{spec}: cannot read as UTF-8 text: {e}")))?;
    if p.extension().is_some_and(|e| e == "jsonl") {
        let mut rows = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::Input(format!("{spec}:{}: invalid JSON: {e}", i + 1)))?;
            let t = v
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| Error::Input(format!("{spec}:{}: no string field `text`", i + 1)))?;
            rows.push(t.to_string());
        }
        return Ok(rows.join("\n\n"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wikitext_join_matches_hf_rows() {
        // file: " \n = A = \n \n x\n"  → rows ["", " = A = \n", "", " x\n"]
        assert_eq!(
            join_wikitext(" \n = A = \n \n x\n"),
            "\n\n = A = \n\n\n\n\n x\n"
        );
        let t = eval_text("wikitext2").unwrap();
        assert!(
            t.starts_with("\n\n = Robert Boulter = \n"),
            "{:?}",
            &t[..40]
        );
    }

    #[test]
    fn unknown_dataset_is_named() {
        let e = eval_text("no-such-set").unwrap_err().to_string();
        assert!(e.contains("no-such-set") && e.contains("wikitext2"));
    }
}
