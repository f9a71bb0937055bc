//! Chat templates: a model's Jinja template turns a conversation into the prompt text it was
//! trained on.
//!
//! Templates are rendered with minijinja set up the way transformers sets up jinja2
//! (`trim_blocks` and `lstrip_blocks` on, no trailing newline kept), with Python string and dict
//! methods (`.strip()`, `.items()`, ...) from minijinja-contrib, and with the helpers that
//! transformers adds: `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter that
//! writes JSON as Python's `json.dumps` does. Templates come from the model files, which the
//! operator chose; they are still treated as outside data: capped in size, in the work a render
//! may do (fuel) and in what it may write, refused if they multiply (`*`, `**`), and minijinja
//! cannot reach the host.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, context};

use crate::{EngineError, Result};

/// Instructions one render may execute (minijinja's fuel).
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// Largest template source accepted, in bytes. Real templates are at most tens of KiB.
pub const MAX_TEMPLATE_LEN: usize = 256 << 10;

/// Largest rendered prompt, in bytes. A conversation arrives in a request body of at most a few
/// MiB; a template that writes far more than that is multiplying something (`seq * n` makes a
/// sequence of any length lazily, and printing it costs no fuel), so the render stops there.
pub const MAX_RENDER_BYTES: usize = 16 << 20;

/// The name the template is registered under; it appears in minijinja's error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool` (or whatever else the template understands).
    pub role: String,
    /// The message text.
    pub content: String,
    /// An assistant's tool calls, in OpenAI's shape (`[{"id", "type": "function", "function":
    /// {"name", "arguments"}}]`) with `arguments` as a JSON object, the way templates expect it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool message's answer is to this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool message's function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: None, tool_call_id: None, name: None }
    }
}

/// A conversation with what else the template is given: the tools the model may call and the
/// caller's extra template variables (`chat_template_kwargs`, such as `enable_thinking`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatInput {
    /// The messages.
    pub messages: Vec<ChatMessage>,
    /// OpenAI's `tools` (`[{"type": "function", "function": {...}}]`), given to the template as
    /// `tools`.
    pub tools: Option<serde_json::Value>,
    /// Extra template variables. The names the renderer sets itself (`messages`, `tools`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`) are refused.
    pub template_kwargs: serde_json::Map<String, serde_json::Value>,
}

/// Template variables that the renderer sets and a caller may not override.
pub const RESERVED_TEMPLATE_VARIABLES: [&str; 5] =
    ["messages", "tools", "add_generation_prompt", "bos_token", "eos_token"];

/// A compiled chat template, ready to render conversations.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Read to tell which conventions the template follows (tool calls, reasoning blocks).
    source: std::sync::Arc<str>,
    source_len: usize,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source_len)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` and `eos_token` are the strings the template sees under
    /// those names (empty when the model has none).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        if source.len() > MAX_TEMPLATE_LEN {
            return Err(EngineError::Template(format!(
                "template is {} bytes, over the {MAX_TEMPLATE_LEN}-byte limit",
                source.len()
            )));
        }
        if let Some(at) = multiplication(source) {
            return Err(EngineError::Template(format!(
                "template uses '*' (at byte {at}); govbox refuses multiplication and powers in chat \
                 templates, since `sequence * n` builds output of any size at no cost in fuel"
            )));
        }
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True); jinja2
        // drops a single trailing newline by default, as minijinja does.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A template comes from a model file, so it is outside data: cap the work one render may
        // do, so that a hostile template cannot spin a request thread forever. Real chat templates
        // use a few thousand units for long conversations.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| EngineError::Template(format!("template does not compile: {e}")))?;
        Ok(Self {
            env,
            source: source.into(),
            source_len: source.len(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template's source text (to read which conventions it follows: tool-call format,
    /// reasoning blocks).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`. With `add_generation_prompt`, the text ends with what opens the
    /// assistant's reply (`<|im_start|>assistant\n` in ChatML).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, None, &serde_json::Map::new(), add_generation_prompt)
    }

    /// Renders `messages` with `tools` (when given) and the caller's extra variables.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        kwargs: &serde_json::Map<String, serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        if let Some(k) = kwargs.keys().find(|k| RESERVED_TEMPLATE_VARIABLES.contains(&k.as_str())) {
            return Err(EngineError::Request(format!("chat_template_kwargs may not set '{k}'")));
        }
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| EngineError::Template(e.to_string()))?;
        let mut out = Capped { buf: Vec::new(), full: false };
        let rendered = tmpl.render_captured_to(
            context! {
                messages => Value::from_serialize(messages),
                tools => tools.map(Value::from_serialize),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
                ..Value::from_serialize(kwargs)
            },
            &mut out,
        );
        if out.full {
            return Err(EngineError::Template(format!(
                "rendering failed: the prompt would be over {MAX_RENDER_BYTES} bytes"
            )));
        }
        rendered.map_err(|e| EngineError::Template(format!("rendering failed: {e}")))?;
        String::from_utf8(out.buf).map_err(|e| EngineError::Template(format!("rendering failed: {e}")))
    }
}

/// The byte offset of the first `*` operator inside a `{{ }}` or `{% %}` tag of `source`, if
/// any: text outside tags, comments, `{% raw %}` blocks and string literals inside tags are
/// skipped. Real chat templates do not multiply; a hostile one can make `[x] * 10**9` and then
/// print or `join` it, which minijinja does lazily and without charging fuel.
fn multiplication(source: &str) -> Option<usize> {
    let b = source.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        let open = (b[i], b[i + 1]);
        i += 2;
        let close = match open {
            (b'{', b'{') => b'}',
            (b'{', b'%') => b'%',
            (b'{', b'#') => {
                i = source[i..].find("#}").map_or(b.len(), |e| i + e + 2);
                continue;
            }
            _ => {
                i -= 1;
                continue;
            }
        };
        let tag_start = i;
        let mut quote = None;
        while i < b.len() {
            match (quote, b[i]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), b'\\') => i += 1,
                (Some(_), _) => {}
                (None, c @ (b'\'' | b'"')) => quote = Some(c),
                (None, b'*') => return Some(i),
                (None, c) if c == close && b.get(i + 1) == Some(&b'}') => break,
                _ => {}
            }
            i += 1;
        }
        i += 2;
        // `{% raw %}` ... `{% endraw %}` is text.
        if close == b'%' && source[tag_start..(i - 2).min(b.len())].trim().trim_matches('-').trim() == "raw" {
            i = source[i.min(b.len())..].find("endraw").map_or(b.len(), |e| i + e);
        }
    }
    None
}

/// The render's output, refusing to grow past [`MAX_RENDER_BYTES`].
struct Capped {
    buf: Vec<u8>,
    full: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > MAX_RENDER_BYTES {
            self.full = true;
            return Err(std::io::Error::other("the rendered prompt is too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `raise_exception(msg)`: templates call it to refuse a conversation (for example, roles that do
/// not alternate).
fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {msg}")))
}

/// `strftime_now(fmt)`: the current time, formatted. The appliance runs on UTC.
fn strftime_now(format: String) -> std::result::Result<String, Error> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats `unix_secs` (UTC) with the C `strftime` conversions that templates use, including the
/// glibc `%-d` form without padding.
fn strftime(format: &str, unix_secs: u64) -> std::result::Result<String, Error> {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let weekday_name = WEEKDAYS[weekday];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let pad = spec != Some('-');
        if !pad {
            spec = chars.next();
        }
        let num = |v: i64, width: usize| if pad { format!("{v:0width$}") } else { v.to_string() };
        let piece = match spec {
            Some('Y') => year.to_string(),
            Some('y') => num(year.rem_euclid(100), 2),
            Some('m') => num(month.into(), 2),
            Some('d') => num(day.into(), 2),
            Some('e') => format!("{day:2}"),
            Some('H') => num(hour as i64, 2),
            Some('I') => num(hour12 as i64, 2),
            Some('M') => num(minute as i64, 2),
            Some('S') => num(second as i64, 2),
            Some('j') => num(day_of_year, 3),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).to_string(),
            Some('B') => month_name.to_string(),
            Some('b') | Some('h') => month_name[..3].to_string(),
            Some('A') => weekday_name.to_string(),
            Some('a') => weekday_name[..3].to_string(),
            Some('F') => format!("{year}-{month:02}-{day:02}"),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('%') => "%".to_string(),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported conversion %{}", other.map(String::from).unwrap_or_default()),
                ));
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (era-based arithmetic: 400-year
/// eras of 146,097 days, years starting in March so that the leap day comes last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `tojson` filter as transformers defines it: Python's `json.dumps` with
/// `ensure_ascii=False`, so `", "` and `": "` separators, no HTML escaping, and the `indent`,
/// `sort_keys` and `ensure_ascii` options.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(usize::try_from(n).unwrap_or(0).min(64))),
            (None, Some(s)) => Some(s.to_string()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")),
        },
    };
    let opts = JsonOpts { indent, sort_keys: sort_keys.unwrap_or(false), ensure_ascii: ensure_ascii.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    // Like jinja2's own tojson, the result is markup-safe: it is inserted as is.
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// Deepest nesting `tojson` writes; minijinja values cannot be cyclic, this only bounds work.
const MAX_JSON_DEPTH: usize = 128;

fn write_json(out: &mut String, v: &Value, opts: &JsonOpts, depth: usize) -> std::result::Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply"));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => {
                        let mut k = String::new();
                        write_json(&mut k, &key, opts, depth + 1)?;
                        k
                    }
                };
                entries.push((key, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', &entries, opts, depth, |out, (k, item), opts, depth| {
                write_json_str(out, k, opts.ensure_ascii);
                out.push_str(": ");
                write_json(out, item, opts, depth + 1)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', &items, opts, depth, |out, item, opts, depth| {
                write_json(out, item, opts, depth + 1)
            })?;
        }
        _ => write_json_str(out, &v.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

type WriteItem<T> = fn(&mut String, &T, &JsonOpts, usize) -> std::result::Result<(), Error>;

fn write_container<T>(
    out: &mut String,
    open: char,
    close: char,
    items: &[T],
    opts: &JsonOpts,
    depth: usize,
    write_item: WriteItem<T>,
) -> std::result::Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        match &opts.indent {
            Some(ind) => {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&ind.repeat(depth + 1));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        write_item(out, item, opts, depth)?;
    }
    if let Some(ind) = &opts.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
    out.push(close);
    Ok(())
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it for the common cases (`1.0`, `0.5`, `NaN`).
fn py_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else if f == f.trunc() && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for d in [-800_000, -1, 0, 59, 60, 365, 10_000, 19_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn strftime_formats_like_c() {
        // 2024-07-23 14:05:09 UTC, a Tuesday, day 205 of a leap year.
        let t = 1_721_743_509;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "23 Jul 2024");
        assert_eq!(strftime("%A %-d %B %y %j", t).unwrap(), "Tuesday 23 July 24 205");
        assert_eq!(strftime("%H:%M:%S %I%p %F %T %%", t).unwrap(), "14:05:09 02PM 2024-07-23 14:05:09 %");
        assert_eq!(strftime("%-m/%e", 1_704_153_600).unwrap(), "1/ 2");
        assert!(strftime("%Q", t).is_err());
        assert!(strftime("%", t).is_err());
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        // Keys keep their insertion order unless sort_keys is given, as in Python.
        let t = ChatTemplate::new(
            "{% set x = {'b': [1, 2.0, none], 'a': {}, 'c': []} %}\
             {{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'a<b>\u{e9}\n' | tojson }}|{{ x | tojson(sort_keys=true) }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"b\": [1, 2.0, null], \"a\": {}, \"c\": []}|{\n  \"b\": [\n    1,\n    2.0,\n    null\n  ],\n  \"a\": {},\n  \"c\": []\n}|\"a<b>\u{e9}\\n\"|{\"a\": {}, \"b\": [1, 2.0, null], \"c\": []}"
        );
    }

    #[test]
    fn oversized_and_broken_templates_are_refused() {
        let big = "x".repeat(MAX_TEMPLATE_LEN + 1);
        assert!(ChatTemplate::new(&big, "", "").unwrap_err().to_string().contains("limit"));
        let e = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err().to_string();
        assert!(e.contains("does not compile"), "{e}");
    }

    /// A template that prints a sequence repeated a hundred million times (found by the
    /// `chat_template` fuzz target: printing costs no fuel) stops at the output cap, at once and
    /// with a clear error, and a template just under the cap still renders.
    #[test]
    fn templates_that_multiply_are_refused_and_output_is_capped() {
        for hostile in [
            "{{9999*9999*messages }}1099}}999",
            "{{ ([1] * 99999999) | join }}",
            "{% set x = messages * 2 %}{{ x }}",
            "{{ 2 ** 10 }}",
            "{%- if true -%}{{ 'a' }}{{ 3*4 }}{%- endif %}",
        ] {
            let e = ChatTemplate::new(hostile, "", "").unwrap_err().to_string();
            assert!(e.contains("refuses multiplication"), "{hostile}: {e}");
        }
        // A `*` in text, comments, raw blocks and string literals is not an operator.
        for fine in [
            "* bullet {{ 'a*b' }} {# 2 * 3 #} {% raw %}{{ 2 * 3 }}{% endraw %} {{ \"*\" ~ 'it\\'s*' }} **bold**",
            "{% for m in messages %}{{ m.content }}{% endfor %}",
        ] {
            let t = ChatTemplate::new(fine, "", "").unwrap_or_else(|e| panic!("{fine}: {e}"));
            t.render(&[ChatMessage::new("user", "hi")], false).unwrap();
        }
        // Output stops at the cap.
        let t = ChatTemplate::new(&format!("{{{{ '{}' }}}}", "x".repeat(100)), "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap().len(), 100);
        let long = ChatMessage::new("user", "y".repeat(MAX_RENDER_BYTES / 2 + 1));
        let t = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", "", "").unwrap();
        assert!(t.render(std::slice::from_ref(&long), false).is_ok());
        let e = t.render(&[long.clone(), long], false).unwrap_err().to_string();
        assert!(e.contains("over 16777216 bytes"), "{e}");
    }
}
