//! Tool calling in each model family's own format, chosen from its chat template.
//!
//! A template that knows tools shows the model the tool definitions and asks for calls in its
//! family's format; the answer is text in that format, which [`ToolFormat::parse`] turns back
//! into calls. The formats read here:
//! * Hermes (Qwen2.5, Qwen3, Hermes, many fine-tunes): `<tool_call>\n{"name": …, "arguments":
//!   {…}}\n</tool_call>`, one block per call;
//! * Llama 3.x JSON: the whole answer is `{"name": …, "parameters": {…}}`, optionally after
//!   `<|python_tag|>`;
//! * DeepSeek V3/R1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n
//!   ```json\n{…}\n```<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>` (V3.1's `NAME<｜tool▁sep｜>{…}` too);
//! * GLM-4: the answer is `NAME\n{…}` right after `<|assistant|>` (a plain answer starts with a
//!   newline instead).
//!
//! A template that never mentions tools (SmolLM2's ChatML, for one) gets the Hermes format:
//! [`hermes_fallback`] writes the definitions into the system message and the history's calls
//! and results as Hermes text, the way Qwen's templates would.
//!
//! When a call is required (`tool_choice: "required"` or a named function), [`ToolFormat::grammar`]
//! gives the grammar that constrained decoding follows, so the call is well-formed JSON naming
//! one of the tools with arguments valid against its parameter schema.

use serde_json::{Value, json};

use crate::chat::{ChatInput, ChatMessage};
use crate::constraint::Grammar;

/// Opens a Hermes tool call.
pub const HERMES_OPEN: &str = "<tool_call>";
/// Closes it.
pub const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
/// Opens DeepSeek's list of calls.
pub const DS_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
/// Closes it.
pub const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";
/// Opens one DeepSeek call.
pub const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
/// Closes it.
pub const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
/// Separates a DeepSeek call's type (or name) from the rest.
pub const DS_SEP: &str = "<｜tool▁sep｜>";
/// The start both DeepSeek openers share: text is held back from here.
const DS_OPENING: &str = "<｜tool▁call";
/// GLM-4's role for tool results: a template that has it calls tools GLM's way.
const GLM_OBSERVATION: &str = "<|observation|>";
/// OpenAI's limit on a function name's length.
pub const MAX_FUNCTION_NAME: usize = 64;
/// The most calls one constrained answer may hold.
pub const MAX_PARALLEL_CALLS: usize = 4;

/// Why a template's tool format cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The template calls tools in a format this module does not read.
    #[error(
        "the model's chat template calls tools in a format govbox does not parse (it reads Hermes \
         <tool_call> blocks, Llama 3 JSON, DeepSeek's tool tokens and GLM-4's name-and-JSON answers)"
    )]
    UnknownFormat,
}

/// A family's tool-call format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{json}</tool_call>` blocks.
    Hermes,
    /// One JSON object, `{"name", "parameters"}`.
    Llama3Json,
    /// DeepSeek's tool tokens around `function<｜tool▁sep｜>NAME` and a fenced JSON block.
    DeepSeek,
    /// GLM-4: `NAME\n{json}` as the whole answer.
    Glm4,
}

/// Whether `s` is a function name as OpenAI allows them: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn is_function_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_FUNCTION_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How a template handles tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateTools {
    /// The format the model answers in.
    pub format: ToolFormat,
    /// Whether the template itself renders tools and tool messages; if not, the conversation
    /// goes through [`hermes_fallback`] first.
    pub native: bool,
}

impl TemplateTools {
    /// Reads the format from a template's source.
    pub fn of_template(source: &str) -> Result<Self, ToolError> {
        // DeepSeek's and GLM-4's markers first: a template may mention other formats in passing.
        if source.contains(DS_CALL_BEGIN) {
            return Ok(Self { format: ToolFormat::DeepSeek, native: true });
        }
        if source.contains(GLM_OBSERVATION) {
            return Ok(Self { format: ToolFormat::Glm4, native: true });
        }
        if source.contains(HERMES_OPEN) {
            return Ok(Self { format: ToolFormat::Hermes, native: true });
        }
        if source.contains(PYTHON_TAG) || (source.contains("ipython") && source.contains("\"parameters\"")) {
            return Ok(Self { format: ToolFormat::Llama3Json, native: true });
        }
        if source.contains("tools") || source.contains("tool_calls") {
            return Err(ToolError::UnknownFormat);
        }
        Ok(Self { format: ToolFormat::Hermes, native: false })
    }

    /// The conversation as this template should see it: written Hermes-style for a template
    /// without tools, and with DeepSeek's calls as text (its templates drop the calls of a
    /// message whose content is a string, and concatenate the arguments as text).
    pub fn prepare(&self, input: &ChatInput) -> ChatInput {
        match (self.native, self.format) {
            (false, _) => hermes_fallback(input),
            (true, ToolFormat::DeepSeek) => deepseek_history(input),
            (true, _) => input.clone(),
        }
    }
}

/// Writes an assistant's calls as DeepSeek's call text in its content.
fn deepseek_history(input: &ChatInput) -> ChatInput {
    let mut out = input.clone();
    for m in &mut out.messages {
        let Some(calls) = m.tool_calls.take() else { continue };
        let mut text = std::mem::take(&mut m.content);
        text.push_str(DS_CALLS_BEGIN);
        for (i, c) in calls.as_array().into_iter().flatten().enumerate() {
            let f = c.get("function").unwrap_or(c);
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            let args = match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "{}".to_string(),
            };
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&format!("{DS_CALL_BEGIN}function{DS_SEP}{name}\n```json\n{args}\n```{DS_CALL_END}"));
        }
        text.push_str(DS_CALLS_END);
        m.content = text;
    }
    out
}

/// One tool the caller offers: its name and the JSON schema of its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The function name.
    pub name: String,
    /// The arguments' schema (`{"type": "object"}` when the caller gave none).
    pub parameters: Value,
}

/// A call found in the model's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCall {
    /// The function name.
    pub name: String,
    /// The arguments, as a JSON text (OpenAI sends a string).
    pub arguments: String,
}

/// An answer split into its text and its calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedAnswer {
    /// The text outside the calls (trimmed).
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<ParsedCall>,
}

/// Reads `{"name": …, "arguments" | "parameters": {…}}`.
fn call_of(v: &Value) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters")).cloned().unwrap_or_else(|| json!({}));
    let arguments = match args {
        // Some models write the arguments as a JSON string, as OpenAI sends them.
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) => s,
        v @ Value::Object(_) => v.to_string(),
        _ => return None,
    };
    Some(ParsedCall { name, arguments })
}

impl ToolFormat {
    /// The text that starts a call, for holding streamed text back until a call is complete.
    pub fn opening(self) -> &'static str {
        match self {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Llama3Json => "{",
            ToolFormat::DeepSeek => DS_OPENING,
            ToolFormat::Glm4 => "",
        }
    }

    /// Whether calls may start anywhere in the answer after a marker ([`Self::opening`]);
    /// otherwise a call is the whole answer.
    pub fn marked(self) -> bool {
        matches!(self, ToolFormat::Hermes | ToolFormat::DeepSeek)
    }

    /// Splits `text` (a whole answer) into content and calls. Text that looks like a call but
    /// does not parse stays in the content, so nothing the model wrote is lost.
    pub fn parse(self, text: &str) -> ParsedAnswer {
        match self {
            ToolFormat::Hermes => parse_marked(text, HERMES_OPEN, HERMES_CLOSE, |body| {
                serde_json::from_str::<Value>(body.trim()).ok().as_ref().and_then(call_of)
            }),
            ToolFormat::DeepSeek => parse_deepseek(text),
            ToolFormat::Glm4 => match glm4_call(text) {
                Some(call) => ParsedAnswer { content: String::new(), calls: vec![call] },
                None => ParsedAnswer { content: text.trim().to_string(), calls: vec![] },
            },
            ToolFormat::Llama3Json => {
                let body = text.trim();
                let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim();
                let calls: Option<Vec<ParsedCall>> = match serde_json::from_str::<Value>(body) {
                    Ok(Value::Array(items)) if !items.is_empty() => items.iter().map(call_of).collect(),
                    Ok(v @ Value::Object(_)) => call_of(&v).map(|c| vec![c]),
                    _ => None,
                };
                match calls {
                    Some(calls) => ParsedAnswer { content: String::new(), calls },
                    None => ParsedAnswer { content: text.trim().to_string(), calls: vec![] },
                }
            }
        }
    }

    /// The grammar of an answer that is nothing but calls to `tools` (one, or with `parallel`
    /// one or more), each naming a tool and with arguments valid against its schema.
    pub fn grammar(self, tools: &[ToolSpec], parallel: bool) -> Grammar {
        let key = match self {
            ToolFormat::Hermes => "arguments",
            ToolFormat::Llama3Json => "parameters",
            ToolFormat::DeepSeek | ToolFormat::Glm4 => return self.named_grammar(tools, parallel),
        };
        let any_of: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, key: t.parameters},
                    "required": ["name", key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = json!({
            "anyOf": any_of,
            "x-guidance": {"whitespace_flexible": false, "lenient": true},
        });
        let call = match self {
            ToolFormat::Hermes => format!("\"{HERMES_OPEN}\\n\" %json {schema} \"\\n{HERMES_CLOSE}\""),
            ToolFormat::Llama3Json | ToolFormat::DeepSeek | ToolFormat::Glm4 => format!("%json {schema}"),
        };
        // Llama 3's format has no way to write two calls. The cap keeps a model that repeats
        // itself (a weak one does) from spending its whole budget on calls.
        let start = if parallel && self == ToolFormat::Hermes {
            format!("start: call (\"\\n\" call){{0,{}}}", MAX_PARALLEL_CALLS - 1)
        } else {
            "start: call".to_string()
        };
        Grammar::Lark(format!("{start}\ncall: {call}\n"))
    }

    /// The grammar for the formats that write the name outside the JSON (DeepSeek, GLM-4): one
    /// rule per tool, its name then arguments valid against its schema.
    fn named_grammar(self, tools: &[ToolSpec], parallel: bool) -> Grammar {
        let mut rules = String::new();
        let mut names = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let mut schema = t.parameters.clone();
            if let Some(o) = schema.as_object_mut() {
                o.insert("x-guidance".into(), json!({"whitespace_flexible": false, "lenient": true}));
            }
            // Names are ^[a-zA-Z0-9_-]+$ (checked where tools come in): safe inside a literal.
            let body = match self {
                ToolFormat::DeepSeek => format!(
                    "\"{DS_CALL_BEGIN}function{DS_SEP}{name}\\n```json\\n\" %json {schema} \"\\n```{DS_CALL_END}\"",
                    name = t.name
                ),
                _ => format!("\"{name}\\n\" %json {schema}", name = t.name),
            };
            rules.push_str(&format!("call{i}: {body}\n"));
            names.push(format!("call{i}"));
        }
        let call = names.join(" | ");
        let start = match self {
            ToolFormat::DeepSeek if parallel => format!(
                "start: \"{DS_CALLS_BEGIN}\" call (\"\\n\" call){{0,{}}} \"{DS_CALLS_END}\"",
                MAX_PARALLEL_CALLS - 1
            ),
            ToolFormat::DeepSeek => format!("start: \"{DS_CALLS_BEGIN}\" call \"{DS_CALLS_END}\""),
            _ => "start: call".to_string(),
        };
        Grammar::Lark(format!("{start}\ncall: {call}\n{rules}"))
    }
}

/// Reads the calls between `open` and `close` markers (the last may be cut off by EOS: it is
/// tried); text outside the calls, and calls that do not parse, stay as content.
fn parse_marked(text: &str, open: &str, close: &str, call: impl Fn(&str) -> Option<ParsedCall>) -> ParsedAnswer {
    let mut out = ParsedAnswer::default();
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        let body_start = at + open.len();
        let (body, next) = match rest[body_start..].find(close) {
            Some(end) => (&rest[body_start..body_start + end], body_start + end + close.len()),
            None => (&rest[body_start..], rest.len()),
        };
        match call(body) {
            Some(c) => {
                out.content.push_str(&rest[..at]);
                out.calls.push(c);
            }
            None => out.content.push_str(&rest[..next]),
        }
        rest = &rest[next..];
    }
    out.content.push_str(rest);
    out.content = out.content.trim().to_string();
    out
}

/// Reads DeepSeek's calls; the list markers go, text outside the calls stays.
fn parse_deepseek(text: &str) -> ParsedAnswer {
    let mut out = parse_marked(text, DS_CALL_BEGIN, DS_CALL_END, deepseek_call);
    if !out.calls.is_empty() {
        out.content = out.content.replace(DS_CALLS_BEGIN, "").replace(DS_CALLS_END, "").trim().to_string();
    }
    out
}

/// One DeepSeek call's body: `function<｜tool▁sep｜>NAME\n```json\n{…}\n```` (V3, R1) or
/// `NAME<｜tool▁sep｜>{…}` (V3.1).
fn deepseek_call(body: &str) -> Option<ParsedCall> {
    let (head, rest) = body.split_once(DS_SEP)?;
    let (name, args) = if head.trim() == "function" {
        let (name, args) = rest.split_once('\n')?;
        let args = args.trim();
        let args = args.strip_prefix("```json").or_else(|| args.strip_prefix("```")).unwrap_or(args);
        (name.trim(), args.strip_suffix("```").unwrap_or(args))
    } else {
        (head.trim(), rest)
    };
    object_call(name, args)
}

/// A GLM-4 answer that is a call: a name on the first line, a JSON object after it.
fn glm4_call(text: &str) -> Option<ParsedCall> {
    let (name, args) = text.split_once('\n')?;
    object_call(name.trim_end(), args)
}

/// A call from a name and a JSON object's text.
fn object_call(name: &str, args: &str) -> Option<ParsedCall> {
    if !is_function_name(name) {
        return None;
    }
    let v: Value = serde_json::from_str(args.trim()).ok()?;
    v.is_object().then(|| ParsedCall { name: name.to_string(), arguments: v.to_string() })
}

/// The instructions a template without tool support gets in its system message (the Hermes
/// convention, which small instruction-tuned models have mostly seen).
fn hermes_instructions(tools: &Value) -> String {
    let mut s = String::from(
        "# Tools\n\nYou can call the functions below to help answer. Their signatures are inside \
         <tools></tools>:\n<tools>",
    );
    for t in tools.as_array().into_iter().flatten() {
        s.push('\n');
        s.push_str(&t.to_string());
    }
    s.push_str(
        "\n</tools>\n\nTo call a function, write a JSON object with its name and arguments inside \
         <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": \
         <args-json-object>}\n</tool_call>",
    );
    s
}

/// Rewrites a conversation for a template that knows nothing of tools: the definitions join the
/// system message, an assistant's calls become Hermes blocks in its text, and tool results
/// become user messages in `<tool_response>` blocks.
pub fn hermes_fallback(input: &ChatInput) -> ChatInput {
    let mut messages = Vec::with_capacity(input.messages.len() + 1);
    if let Some(tools) = input.tools.as_ref().filter(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
        let text = hermes_instructions(tools);
        match input.messages.first() {
            Some(m) if m.role == "system" => {
                messages.push(ChatMessage::new("system", format!("{}\n\n{text}", m.content)));
            }
            _ => messages.push(ChatMessage::new("system", text)),
        }
    }
    let skip = usize::from(!messages.is_empty() && input.messages.first().is_some_and(|m| m.role == "system"));
    for m in &input.messages[skip..] {
        match m.role.as_str() {
            "assistant" if m.tool_calls.is_some() => {
                let mut text = m.content.clone();
                for c in m.tool_calls.as_ref().and_then(Value::as_array).into_iter().flatten() {
                    let f = c.get("function").unwrap_or(c);
                    let call = json!({"name": f.get("name"), "arguments": f.get("arguments")});
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!("{HERMES_OPEN}\n{call}\n{HERMES_CLOSE}"));
                }
                messages.push(ChatMessage::new("assistant", text));
            }
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match messages.last_mut() {
                    // Consecutive results share one user turn, as Qwen's template writes them.
                    Some(prev) if prev.role == "user" && prev.content.ends_with("</tool_response>") => {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => messages.push(ChatMessage::new("user", block)),
                }
            }
            _ => messages.push(ChatMessage::new(m.role.clone(), m.content.clone())),
        }
    }
    ChatInput { messages, tools: None, template_kwargs: input.template_kwargs.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_answers_parse() {
        let a = ToolFormat::Hermes.parse(
            "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}\n</tool_call>",
        );
        assert_eq!(a.content, "Let me check.");
        assert_eq!(
            a.calls,
            vec![
                ParsedCall { name: "weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
                ParsedCall { name: "time".into(), arguments: r#"{"tz": "CET"}"#.into() },
            ]
        );
        // Broken JSON stays text; an unclosed block at EOS still counts when it parses.
        let a = ToolFormat::Hermes.parse("<tool_call>{oops}</tool_call> then <tool_call>{\"name\": \"x\"}");
        assert_eq!(a.content, "<tool_call>{oops}</tool_call> then");
        assert_eq!(a.calls, vec![ParsedCall { name: "x".into(), arguments: "{}".into() }]);
        assert_eq!(ToolFormat::Hermes.parse("plain").calls, vec![]);
    }

    #[test]
    fn llama3_answers_parse() {
        let a = ToolFormat::Llama3Json.parse("<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": 1}}");
        assert_eq!(a.calls, vec![ParsedCall { name: "f".into(), arguments: r#"{"a":1}"#.into() }]);
        assert_eq!(a.content, "");
        let a = ToolFormat::Llama3Json.parse("{\"answer\": 1}");
        assert_eq!((a.calls.len(), a.content.as_str()), (0, "{\"answer\": 1}"));
    }

    #[test]
    fn formats_come_from_the_template() {
        let qwen = include_str!("../../tests/fixtures/chat-templates/qwen3.jinja");
        assert_eq!(
            TemplateTools::of_template(qwen).unwrap(),
            TemplateTools { format: ToolFormat::Hermes, native: true }
        );
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
        assert_eq!(
            TemplateTools::of_template(chatml).unwrap(),
            TemplateTools { format: ToolFormat::Hermes, native: false }
        );
        assert!(TemplateTools::of_template("{{ tools }}<|function_call|>").is_err());
        let r1 = include_str!("../../tests/fixtures/chat-templates/deepseek-r1-distill-llama.jinja");
        assert_eq!(TemplateTools::of_template(r1).unwrap().format, ToolFormat::DeepSeek);
        let glm4 = include_str!("../../tests/fixtures/chat-templates/glm4.jinja");
        assert_eq!(TemplateTools::of_template(glm4).unwrap().format, ToolFormat::Glm4);
    }

    #[test]
    fn deepseek_answers_parse() {
        let a = ToolFormat::DeepSeek.parse(
            "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>weather\n```json\n\
             {\"city\": \"北京\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>time\n\
             ```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        );
        assert_eq!(a.content, "Checking.");
        assert_eq!(
            a.calls,
            vec![
                ParsedCall { name: "weather".into(), arguments: r#"{"city":"北京"}"#.into() },
                ParsedCall { name: "time".into(), arguments: "{}".into() },
            ]
        );
        // V3.1's form, and a broken call that stays text.
        let a = ToolFormat::DeepSeek.parse("<｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\": 1}<｜tool▁call▁end｜>");
        assert_eq!(a.calls, vec![ParsedCall { name: "f".into(), arguments: r#"{"a":1}"#.into() }]);
        let text = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{oops\n```<｜tool▁call▁end｜>";
        assert_eq!(ToolFormat::DeepSeek.parse(text), ParsedAnswer { content: text.into(), calls: vec![] });
    }

    #[test]
    fn glm4_answers_parse() {
        let a = ToolFormat::Glm4.parse("get_weather\n{\"city\": \"Paris\"}");
        assert_eq!(a.calls, vec![ParsedCall { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }]);
        assert_eq!(a.content, "");
        for plain in ["\nIt is sunny.", "Sure thing\n{}", "get_weather\nnot json", "one line"] {
            let a = ToolFormat::Glm4.parse(plain);
            assert_eq!((a.calls.len(), a.content.as_str()), (0, plain.trim()), "{plain:?}");
        }
    }

    /// `first`, then an assistant's call to `weather` and its result.
    fn weather_history(first: Vec<ChatMessage>, tools: Value) -> ChatInput {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(json!([{"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": {"city": "Paris"}}}]));
        let mut result = ChatMessage::new("tool", "18C");
        result.tool_call_id = Some("c1".into());
        let mut messages = first;
        messages.extend([call, result]);
        ChatInput { messages, tools: Some(tools), template_kwargs: Default::default() }
    }

    /// A conversation with a call and its result, rendered by the real DeepSeek-R1 template and
    /// by the GLM-4 fixture: each shows the call in its own format.
    #[test]
    fn histories_render_calls_in_the_family_s_format() {
        use crate::chat::ChatTemplate;
        let input = weather_history(
            vec![ChatMessage::new("user", "Weather?")],
            json!([{"type": "function", "function": {"name": "weather", "parameters": {}}}]),
        );
        let render = |src: &str| {
            let tt = TemplateTools::of_template(src).unwrap();
            let i = tt.prepare(&input);
            ChatTemplate::new(src, "<s>", "</s>")
                .unwrap()
                .render_with(&i.messages, i.tools.as_ref(), &Default::default(), true)
                .unwrap()
        };
        let r1 = render(include_str!("../../tests/fixtures/chat-templates/deepseek-r1-distill-llama.jinja"));
        assert!(
            r1.ends_with(
                "<｜User｜>Weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>weather\n\
                 ```json\n{\"city\":\"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>\
                 <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>18C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
            ),
            "{r1}"
        );
        let glm = render(include_str!("../../tests/fixtures/chat-templates/glm4.jinja"));
        assert!(glm.contains("## weather"), "{glm}");
        assert!(
            glm.ends_with(
                "<|user|>\nWeather?<|assistant|>weather\n{\"city\": \"Paris\"}<|observation|>\n18C<|assistant|>"
            ),
            "{glm}"
        );
        // What the model answers in each format parses back to the call.
        let deepseek_answer = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        assert_eq!(ToolFormat::DeepSeek.parse(deepseek_answer).calls[0].name, "weather");
    }

    #[test]
    fn fallback_writes_tools_calls_and_results_as_hermes_text() {
        let input = weather_history(
            vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Weather?")],
            json!([{"type": "function", "function": {"name": "weather"}}]),
        );
        let out = hermes_fallback(&input);
        let roles: Vec<&str> = out.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(
            out.messages[0].content.starts_with("Be brief.\n\n# Tools")
                && out.messages[0].content.contains("\"weather\"")
        );
        assert_eq!(
            out.messages[2].content,
            "<tool_call>\n{\"name\":\"weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(out.messages[3].content, "<tool_response>\n18C\n</tool_response>");
        assert_eq!(out.tools, None);
    }
}
