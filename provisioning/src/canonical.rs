//! Canonical JSON: the one byte form of a document that signatures and hashes cover.
//!
//! The rules: object keys sorted by their UTF-8 bytes (which is code-point order), no whitespace
//! anywhere, strings escaped exactly as `serde_json` escapes them, and numbers as `serde_json`
//! prints them (our documents hold only integers). Two parties that hold the same document thus
//! produce the same bytes, independently of field order in the source and of whether serde_json's
//! `preserve_order` feature is switched on somewhere in the build.

use serde_json::Value;

/// Serializes `value` canonically (see the module documentation).
pub fn to_canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    // Serializing a &str to JSON cannot fail; the fallback keeps this total without a panic path.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level_and_there_is_no_whitespace() {
        let v = json!({"b": 1, "a": {"z": [true, null, "x y"], "_t": "é\n"}, "A": -2});
        assert_eq!(to_canonical_json(&v), r#"{"A":-2,"a":{"_t":"é\n","z":[true,null,"x y"]},"b":1}"#);
    }
}
