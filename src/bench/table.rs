//! `sasprune bench --table FILE...`: the JSON lines `sasprune bench` and its peers
//! (benches/peers/, lines marked `"peer": "pytorch"`) append, as one Markdown table: each
//! measurement's latest value from sasprune beside each peer's of the same name, with their
//! ratio. Every unit the bench writes is a rate (GFLOP/s, GB/s, images/s), so a ratio above 1
//! means sasprune is faster. Reads files only; runs nothing.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

const OURS: &str = "sasprune";

/// One measurement's name, unit and latest value per side (sasprune or a peer).
struct Row {
    name: String,
    unit: String,
    values: BTreeMap<String, f64>,
}

/// One side (sasprune or a peer) as its latest line describes it.
struct Side {
    name: String,
    adapter: String,
    description: String,
}

/// One line's measurement: its name, unit and value, and the side (sasprune or a peer) that
/// measured it, on which adapter.
struct Measurement {
    name: String,
    unit: String,
    value: f64,
    side: Side,
}

/// Where a line is, for its errors.
struct Place<'a> {
    file: &'a std::path::Path,
    line: usize,
}

impl Place<'_> {
    fn error(&self, why: String) -> Error {
        Error::invalid(format!(
            "{}:{}: {why}; expected the JSON lines that `sasprune bench` or a peer in benches/peers/ writes",
            self.file.display(),
            self.line
        ))
    }
}

/// The table of `files` (later lines and files replace earlier values of the same side and
/// name: pass a tuning run before the run to quote), only names containing `filter` if given.
/// A line without a value (the bench writes `null` for a rate it could not compute) is left out
/// with a note on stderr.
pub fn side_by_side(files: &[PathBuf], filter: Option<&str>) -> Result<String> {
    let mut rows: Vec<Row> = Vec::new();
    // sasprune first, then peers as met
    let mut sides = vec![Side { name: OURS.into(), adapter: String::new(), description: String::new() }];
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let place = Place { file, line: i + 1 };
            if let Some(m) = measurement(line, &place, filter)? {
                add(&mut rows, &mut sides, m).map_err(|why| place.error(why))?;
            }
        }
    }
    if rows.is_empty() {
        let which = filter.map_or(String::new(), |f| format!(" whose name contains '{f}'"));
        return Err(Error::invalid(format!("no measurements{which} in {}", names(files))));
    }
    Ok(render(&rows, &sides))
}

/// The measurement of one line, or None where `filter` leaves it out or it has no value.
fn measurement(line: &str, place: &Place, filter: Option<&str>) -> Result<Option<Measurement>> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| place.error(format!("not JSON ({e})")))?;
    let field =
        |key: &str| v.get(key).and_then(|x| x.as_str()).ok_or_else(|| place.error(format!("no \"{key}\" text")));
    let (name, unit) = (field("name")?, field("unit")?);
    if filter.is_some_and(|f| !name.contains(f)) {
        return Ok(None);
    }
    let value = match v.get("value") {
        Some(serde_json::Value::Null) => {
            errln!("note: {}:{}: \"{name}\" has no value; left out", place.file.display(), place.line);
            return Ok(None);
        }
        value => value.and_then(|x| x.as_f64()).filter(|x| x.is_finite() && *x >= 0.0),
    };
    let value = value.ok_or_else(|| place.error("no \"value\" that is a rate".into()))?;
    let side = Side {
        name: v.get("peer").and_then(|p| p.as_str()).unwrap_or(OURS).into(),
        adapter: v.get("adapter").and_then(|a| a.as_str()).unwrap_or("unknown adapter").into(),
        description: describe(&v),
    };
    Ok(Some(Measurement { name: name.into(), unit: unit.into(), value, side }))
}

/// Puts `m` in its row (a new one where its name is new; a measurement in another unit than
/// its row's is refused) and makes its line the latest description of its side.
fn add(rows: &mut Vec<Row>, sides: &mut Vec<Side>, m: Measurement) -> std::result::Result<(), String> {
    let at = match rows.iter().position(|r| r.name == m.name) {
        Some(at) if rows[at].unit != m.unit => {
            return Err(format!("\"{}\" in {}, where an earlier line has {}", m.name, m.unit, rows[at].unit))
        }
        Some(at) => at,
        None => {
            rows.push(Row { name: m.name, unit: m.unit, values: BTreeMap::new() });
            rows.len() - 1
        }
    };
    rows[at].values.insert(m.side.name.clone(), m.value);
    match sides.iter_mut().find(|s| s.name == m.side.name) {
        Some(entry) => *entry = m.side,
        None => sides.push(m.side),
    }
    Ok(())
}

/// "adapter (backend, driver ...; commit ...)" from a line's fields, those it has.
fn describe(v: &serde_json::Value) -> String {
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
    let how: Vec<&str> = ["backend", "driver", "driver_info"].iter().filter_map(|k| text(k)).collect();
    let mut out = text("adapter").unwrap_or("unknown adapter").to_string();
    if !how.is_empty() {
        out += &format!(" ({})", how.join(", "));
    }
    if let Some(commit) = text("commit") {
        out += &format!(", commit {commit}");
    }
    out
}

fn names(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Text for a table cell: a `|` would end the cell.
fn cell_text(text: &str) -> String {
    text.replace('|', "\\|")
}

fn render(rows: &[Row], sides: &[Side]) -> String {
    let mut out = String::new();
    let met: Vec<&Side> = sides.iter().filter(|s| rows.iter().any(|r| r.values.contains_key(&s.name))).collect();
    for side in &met {
        out += &format!("{}: {}\n", side.name, side.description);
    }
    if met.windows(2).any(|w| w[0].adapter != w[1].adapter) {
        out += "note: the sides name different adapters; compare only results from the same card and call\n";
    }
    let peers: Vec<&str> = met.iter().map(|s| s.name.as_str()).filter(|s| *s != OURS).collect();
    out += "\n| measurement | unit | sasprune |";
    for peer in peers.iter().map(|p| cell_text(p)) {
        out += &format!(" {peer} | sasprune / {peer} |");
    }
    out += "\n|---|---|---|";
    out += &"---|---|".repeat(peers.len());
    out += "\n";
    for row in rows {
        let cell = |side: &str| row.values.get(side).map_or("–".to_string(), |&v| rate(v));
        out += &format!("| {} | {} | {} |", cell_text(&row.name), cell_text(&row.unit), cell(OURS));
        for peer in &peers {
            let ratio = match (row.values.get(OURS), row.values.get(*peer)) {
                (Some(&ours), Some(&theirs)) if theirs > 0.0 => format!("{:.2}x", ours / theirs),
                _ => "–".into(),
            };
            out += &format!(" {} | {ratio} |", cell(peer));
        }
        out += "\n";
    }
    out
}

/// A rate as README's tables write it: thousands separated from 100 on, else 3 significant
/// digits (chosen on the rounded value: 99.96 is "100", 9.996 "10.0").
fn rate(v: f64) -> String {
    if v >= 99.95 {
        let digits = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 9.995 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_in_readme() {
        assert_eq!(rate(14_803.4), "14,803");
        assert_eq!(rate(1_234_567.0), "1,234,567");
        assert_eq!(rate(100.0), "100");
        assert_eq!(rate(22.03), "22.0");
        assert_eq!(rate(0.734), "0.73");
        assert_eq!(rate(99.96), "100");
        assert_eq!(rate(9.996), "10.0");
    }

    #[test]
    fn latest_values_side_by_side_with_ratios() {
        let dir = std::env::temp_dir().join(format!("sasprune-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = |name: &str, value: f64, unit: &str, peer: Option<&str>| {
            let mut v = serde_json::json!({"name": name, "value": value, "unit": unit, "adapter": "GPU X",
                                           "backend": "Vulkan", "commit": "abc"});
            if let Some(p) = peer {
                v["peer"] = p.into();
            }
            v.to_string() + "\n"
        };
        let (tuning, quoted, peer) = (dir.join("bench.jsonl"), dir.join("bench2.jsonl"), dir.join("peer.jsonl"));
        std::fs::write(&tuning, line("resnet32 train step b128", 9_000.0, "images/s", None)).unwrap();
        let ours =
            line("resnet32 train step b128", 14_803.0, "images/s", None) + &line("gemm 64", 5.0, "GFLOP/s", None);
        std::fs::write(&quoted, ours).unwrap();
        let theirs = line("resnet32 train step b128", 11_262.0, "images/s", Some("pytorch"))
            + "\n"
            + &line("softmax", 40.0, "GB/s", Some("pytorch"));
        std::fs::write(&peer, theirs).unwrap();
        let table = side_by_side(&[tuning.clone(), quoted.clone(), peer.clone()], None).unwrap();
        assert!(
            table.starts_with("sasprune: GPU X (Vulkan), commit abc\npytorch: GPU X (Vulkan), commit abc\n"),
            "{table}"
        );
        assert!(table.contains("| measurement | unit | sasprune | pytorch | sasprune / pytorch |"), "{table}");
        // the later file's value is the one shown, beside the peer's, with the ratio
        assert!(table.contains("| resnet32 train step b128 | images/s | 14,803 | 11,262 | 1.31x |"), "{table}");
        assert!(table.contains("| gemm 64 | GFLOP/s | 5.00 | – | – |"), "{table}");
        assert!(table.contains("| softmax | GB/s | – | 40.0 | – |"), "{table}");
        assert!(!table.contains("note:"), "{table}");
        // a line without a value is left out; a '|' in a name stays inside its cell; sides on
        // different adapters get a note
        let odd = r#"{"name": "a|b", "value": 2.0, "unit": "GB/s", "adapter": "GPU Y"}"#.to_string()
            + "\n"
            + r#"{"name": "gemm 64", "value": null, "unit": "GFLOP/s"}"#;
        std::fs::write(&tuning, odd).unwrap();
        let table = side_by_side(&[tuning.clone(), peer.clone()], None).unwrap();
        assert!(table.contains("| a\\|b | GB/s | 2.00 |") && !table.contains("gemm 64"), "{table}");
        assert!(table.contains("note: the sides name different adapters"), "{table}");
        let filtered = side_by_side(&[quoted.clone(), peer.clone()], Some("gemm")).unwrap();
        assert!(filtered.contains("| gemm 64 |") && !filtered.contains("resnet32") && !filtered.contains("pytorch"));

        // bad input: the file and line, never a panic
        std::fs::write(&peer, line("gemm 64", 5.0, "GFLOP/s", None) + "{\"name\": \"x\"}\n").unwrap();
        let e = side_by_side(std::slice::from_ref(&peer), None).unwrap_err().to_string();
        assert!(e.contains("peer.jsonl:2") && e.contains("\"unit\""), "{e}");
        std::fs::write(&peer, line("gemm 64", 5.0, "GB/s", Some("pytorch"))).unwrap();
        let e = side_by_side(&[quoted.clone(), peer.clone()], None).unwrap_err().to_string();
        assert!(e.contains("peer.jsonl:1") && e.contains("GFLOP/s"), "{e}");
        std::fs::write(&peer, "not json\n").unwrap();
        assert!(side_by_side(std::slice::from_ref(&peer), None)
            .unwrap_err()
            .to_string()
            .contains("peer.jsonl:1: not JSON"));
        let e = side_by_side(std::slice::from_ref(&quoted), Some("nothing")).unwrap_err().to_string();
        assert!(e.contains("no measurements whose name contains 'nothing'"), "{e}");
        assert!(side_by_side(&[dir.join("absent.jsonl")], None).unwrap_err().to_string().contains("absent.jsonl"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
