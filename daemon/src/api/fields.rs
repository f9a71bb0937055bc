//! Reading a parsed JSON body into a typed request, with errors that name the field at fault
//! (`messages`, `messages[2].content`, `temperature`) and say what it should hold, without ever
//! repeating what the client sent: serde's messages quote the input (`invalid type: string
//! "..."`), and the input may be a prompt, so only serde's *expectation* (written by our types)
//! and the JSON type of the value found there are kept.

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

use crate::api::error::ApiError;

/// Object keys are echoed in `param` only when they look like a field name; a longer or odder
/// key (a map such as `logit_bias` has client-chosen keys) is shown as `?`.
const MAX_KEY_LEN: usize = 40;

/// Deserializes `T` from `v`; a failure becomes [`ApiError::MissingField`] or
/// [`ApiError::WrongType`] naming the field.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    // serde would read a struct from an array too; a request body is an object.
    if !v.is_object() {
        return Err(ApiError::WrongType {
            param: "(body)".into(),
            expected: "an object".into(),
            got: Some(json_kind(v)),
        });
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = param_of(e.path());
        let msg = e.inner().to_string();
        if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            let param = if path.is_empty() { field.to_string() } else { format!("{path}.{field}") };
            return ApiError::MissingField { param };
        }
        let got = lookup(v, e.path()).map(json_kind);
        let param = if path.is_empty() { "(body)".to_string() } else { path };
        // Only serde's expectation is kept: the rest of its message may quote the input.
        ApiError::WrongType { param, expected: expectation(&msg), got }
    })
}

/// `messages[0].content` from serde_path_to_error's path.
fn param_of(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                let plain = !key.is_empty()
                    && key.len() <= MAX_KEY_LEN
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                out.push_str(if plain { key } else { "?" });
            }
            Segment::Enum { .. } => {}
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    out
}

/// The value at `path` in `v`, if the path leads to one.
fn lookup<'a>(v: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.iter() {
        cur = match seg {
            Segment::Seq { index } => cur.get(*index)?,
            Segment::Map { key } => cur.get(key.as_str())?,
            Segment::Enum { .. } => cur,
            Segment::Unknown => return None,
        };
    }
    Some(cur)
}

/// What kind of JSON value a client sent, in words that never include the value.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "a negative number",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the field should hold, from serde's message. Only the part after `expected` is kept
/// (our types write it); the part before may quote the input. An untagged enum's fallback
/// message is its `#[serde(expecting = "...")]` text, which starts with "a"/"an"/"one of".
fn expectation(msg: &str) -> String {
    let raw = match msg.split_once(", expected ") {
        Some((_, e)) => e,
        None if (msg.starts_with("a ") || msg.starts_with("an ")) && !msg.contains(['`', '"']) => msg,
        None => return "a value of another type or shape".to_string(),
    };
    match raw {
        "f32" | "f64" => "a number".to_string(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, not negative".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "a sequence" => "an array".to_string(),
        "a boolean" => "true or false".to_string(),
        "a map" => "an object".to_string(),
        s if s.starts_with("struct ") => "an object".to_string(),
        s => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Req {
        messages: Vec<Msg>,
        max_tokens: Option<u64>,
        temperature: Option<f32>,
        stream: Option<bool>,
        bias: Option<std::collections::HashMap<String, f32>>,
    }

    fn err(v: Value) -> ApiError {
        from_value::<Req>(&v).unwrap_err()
    }

    #[test]
    fn errors_name_the_field_and_what_it_expects_without_quoting_it() {
        let e = err(json!({"max_tokens": 5}));
        assert_eq!((e.param(), e.code()), (Some("messages"), "missing_required_parameter"));
        assert_eq!(e.to_string(), "the required field 'messages' is missing");
        let e = err(json!({"messages": [{"role": "user"}, {}]}));
        assert_eq!(e.param(), Some("messages[1].role"));
        let e = err(json!({"messages": [], "max_tokens": -1}));
        assert_eq!((e.param(), e.code()), (Some("max_tokens"), "invalid_type"));
        assert_eq!(e.to_string(), "'max_tokens' must be a whole number, not negative (got a negative number)");
        let e = err(json!({"messages": [], "temperature": "SECRET"}));
        assert_eq!(e.param(), Some("temperature"));
        assert_eq!(e.to_string(), "'temperature' must be a number (got a string)");
        let e = err(json!({"messages": "SECRET", "stream": 1}));
        assert_eq!(
            (e.param(), e.to_string().as_str()),
            (Some("messages"), "'messages' must be an array (got a string)")
        );
        let e = err(json!({"messages": [], "stream": "SECRET"}));
        assert_eq!(e.to_string(), "'stream' must be true or false (got a string)");
        // A client-chosen key is not echoed.
        let e = err(json!({"messages": [], "bias": {"SECRET PROMPT": "x", "12": 1}}));
        assert_eq!(e.param(), Some("bias.?"));
        let e = err(json!(["SECRET"]));
        assert_eq!(e.param(), Some("(body)"));
        for v in [json!({"messages": [], "temperature": "SECRET"}), json!({"messages": [{"role": ["SECRET"]}]})] {
            let e = err(v);
            assert!(!e.body().to_string().contains("SECRET"), "{}", e.body());
            assert_eq!(e.status(), 400);
        }
    }
}
