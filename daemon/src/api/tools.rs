//! The chat fields agents use, and the shape of their answers: `tools` and `tool_choice`,
//! `response_format`, `chat_template_kwargs` and `reasoning_effort` in; `tool_calls`,
//! `reasoning_content` and `finish_reason: "tool_calls"` out.
//!
//! The engine does the work (grammar-constrained sampling, the families' tool formats, the
//! reasoning split); this module checks the fields, picks the format from the model's chat
//! template, and writes OpenAI's JSON, whole or as stream deltas.

use govbox_engine::chat::{ChatInput, ChatMessage, RESERVED_TEMPLATE_VARIABLES};
use govbox_engine::constraint::Grammar;
use govbox_engine::reasoning::{Piece, ReasoningSplitter, template_thinks};
use govbox_engine::tools::{ParsedAnswer, TemplateTools, ToolFormat, ToolSpec, hermes_fallback};
use govbox_engine::{Engine, FinishReason, Prompt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::error::ApiError;

/// At most this many tools per request.
const MAX_TOOLS: usize = 128;
/// OpenAI's limit on a function name: `^[a-zA-Z0-9_-]{1,64}$`.
const MAX_NAME: usize = 64;

/// A function the model may call.
#[derive(Debug, Deserialize)]
pub struct FunctionDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

/// One entry of `tools`.
#[derive(Debug, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionDef,
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name"}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// A mode.
    Mode(String),
    /// One named function.
    Named {
        /// `function`.
        #[serde(rename = "type")]
        kind: String,
        /// `{"name": ...}`.
        function: NamedFunction,
    },
}

/// The function of a named `tool_choice`.
#[derive(Debug, Deserialize)]
pub struct NamedFunction {
    name: String,
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    json_schema: Option<JsonSchemaFormat>,
}

/// The agent fields of a chat request.
#[derive(Debug, Default, Deserialize)]
pub struct AgentFields {
    /// Tools the model may call.
    pub tools: Option<Vec<Tool>>,
    /// Whether and which tool it must call.
    pub tool_choice: Option<ToolChoice>,
    /// Whether it may call several at once (default true).
    pub parallel_tool_calls: Option<bool>,
    /// The legacy `functions` field (refused: use `tools`).
    pub functions: Option<serde::de::IgnoredAny>,
    /// Structured output.
    pub response_format: Option<ResponseFormat>,
    /// Extra chat-template variables (`enable_thinking`).
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Passed to the template as `reasoning_effort`, for templates that read it.
    pub reasoning_effort: Option<String>,
}

/// An assistant's tool call in the history (OpenAI's shape).
#[derive(Debug, Deserialize)]
pub struct HistoryCall {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    function: HistoryFunction,
}

/// Its function part.
#[derive(Debug, Deserialize)]
pub struct HistoryFunction {
    name: String,
    arguments: String,
}

/// The history's calls as templates read them: `arguments` as an object where it is JSON.
pub fn calls_for_template(calls: &[HistoryCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                let args = serde_json::from_str::<Value>(&c.function.arguments)
                    .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
                json!({
                    "id": c.id,
                    "type": c.kind.as_deref().unwrap_or("function"),
                    "function": {"name": c.function.name, "arguments": args},
                })
            })
            .collect(),
    )
}

/// What a chat request asks of the engine beyond plain text.
pub struct Plan {
    /// The prompt.
    pub prompt: Prompt,
    /// The grammar the answer must follow.
    pub grammar: Option<Grammar>,
    /// The format to read tool calls in (`None`: no tools, or `tool_choice: "none"`).
    pub tools: Option<ToolFormat>,
    /// Whether the model's template thinks in `<think>` blocks.
    pub reasoning: bool,
}

fn check_name(name: &str, param: &'static str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(param, format!("a function name must match ^[a-zA-Z0-9_-]{{1,{MAX_NAME}}}$")))
    }
}

impl AgentFields {
    /// Checks the fields against the model and builds the plan for `messages`.
    pub fn plan(&self, messages: Vec<ChatMessage>, engine: &Engine) -> Result<Plan, ApiError> {
        if self.functions.is_some() {
            return Err(ApiError::invalid("functions", "the legacy functions field is not supported: use tools"));
        }
        let source = engine.tokenizer().chat_template().map(|t| t.source().to_string()).unwrap_or_default();
        let mut kwargs = self.chat_template_kwargs.clone().unwrap_or_default();
        if let Some(k) = kwargs.keys().find(|k| RESERVED_TEMPLATE_VARIABLES.contains(&k.as_str())) {
            return Err(ApiError::invalid("chat_template_kwargs", format!("chat_template_kwargs may not set '{k}'")));
        }
        if let Some(e) = &self.reasoning_effort {
            if !["none", "minimal", "low", "medium", "high"].contains(&e.as_str()) {
                return Err(ApiError::invalid(
                    "reasoning_effort",
                    "reasoning_effort must be none, minimal, low, medium or high",
                ));
            }
            kwargs.entry("reasoning_effort").or_insert_with(|| Value::String(e.clone()));
        }
        let (tools_json, specs) = self.tools()?;
        let mode = self.mode(&specs)?;
        let mut grammar = self.response_grammar()?;
        let mut grammar_param = "response_format";
        let mut input = ChatInput { messages, tools: tools_json, template_kwargs: kwargs };
        let mut format = None;
        let with_history = input.messages.iter().any(|m| m.role == "tool" || m.tool_calls.is_some());
        if !specs.is_empty() || with_history {
            let tt = TemplateTools::of_template(&source).map_err(|e| ApiError::invalid("tools", e.to_string()))?;
            if !tt.native {
                input = hermes_fallback(&input);
            }
            if !specs.is_empty() && !matches!(mode, Mode::None) {
                format = Some(tt.format);
            }
            let parallel = self.parallel_tool_calls.unwrap_or(true);
            let forced = match &mode {
                Mode::Required => Some(specs.clone()),
                Mode::Named(n) => Some(specs.iter().filter(|s| &s.name == n).cloned().collect()),
                Mode::Auto | Mode::None => None,
            };
            if let Some(forced) = forced {
                if grammar.is_some() {
                    return Err(ApiError::invalid(
                        "response_format",
                        "response_format cannot be combined with a required or named tool_choice",
                    ));
                }
                grammar = Some(tt.format.grammar(&forced, parallel && matches!(mode, Mode::Required)));
                grammar_param = "tools";
            }
        }
        if let Some(g) = &grammar {
            engine.compile_grammar(g).map_err(|e| ApiError::invalid(grammar_param, e.to_string()))?;
        }
        Ok(Plan { prompt: Prompt::Conversation(input), grammar, tools: format, reasoning: template_thinks(&source) })
    }

    fn tools(&self) -> Result<(Option<Value>, Vec<ToolSpec>), ApiError> {
        let Some(tools) = self.tools.as_ref().filter(|t| !t.is_empty()) else { return Ok((None, vec![])) };
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid("tools", format!("at most {MAX_TOOLS} tools are allowed")));
        }
        let mut specs: Vec<ToolSpec> = Vec::with_capacity(tools.len());
        let mut json_tools = Vec::with_capacity(tools.len());
        for t in tools {
            if t.kind != "function" {
                return Err(ApiError::invalid("tools", "each tool must have type \"function\""));
            }
            let f = &t.function;
            check_name(&f.name, "tools")?;
            if specs.iter().any(|s| s.name == f.name) {
                return Err(ApiError::invalid("tools", format!("two tools are named '{}'", f.name)));
            }
            let parameters = f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            if !parameters.is_object() {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tool '{}': parameters must be a JSON schema object", f.name),
                ));
            }
            let mut function = json!({"name": f.name, "parameters": parameters});
            if let Some(d) = &f.description {
                function["description"] = Value::String(d.clone());
            }
            if let Some(s) = f.strict {
                function["strict"] = Value::Bool(s);
            }
            json_tools.push(json!({"type": "function", "function": function}));
            specs.push(ToolSpec { name: f.name.clone(), parameters });
        }
        Ok((Some(Value::Array(json_tools)), specs))
    }

    fn mode(&self, specs: &[ToolSpec]) -> Result<Mode, ApiError> {
        let mode = match &self.tool_choice {
            None => Mode::Auto,
            Some(ToolChoice::Mode(m)) => match m.as_str() {
                "auto" => Mode::Auto,
                "none" => Mode::None,
                "required" => Mode::Required,
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice must be auto, none, required or a function",
                    ));
                }
            },
            Some(ToolChoice::Named { kind, function }) => {
                if kind != "function" {
                    return Err(ApiError::invalid("tool_choice", "a named tool_choice must have type \"function\""));
                }
                if !specs.iter().any(|s| s.name == function.name) {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("tool_choice names '{}', which is not among tools", function.name),
                    ));
                }
                Mode::Named(function.name.clone())
            }
        };
        if specs.is_empty() && matches!(mode, Mode::Required | Mode::Named(_)) {
            return Err(ApiError::invalid("tool_choice", "tool_choice requires a tool call but tools is empty"));
        }
        Ok(mode)
    }

    fn response_grammar(&self) -> Result<Option<Grammar>, ApiError> {
        let Some(f) = &self.response_format else { return Ok(None) };
        match f.kind.as_str() {
            "text" => Ok(None),
            "json_object" => Ok(Some(Grammar::JsonObject)),
            "json_schema" => {
                let js = f.json_schema.as_ref().ok_or_else(|| {
                    ApiError::invalid("response_format", "response_format json_schema needs a json_schema object")
                })?;
                let schema = js.schema.clone().unwrap_or_else(|| json!({"type": "object"}));
                if !schema.is_object() {
                    return Err(ApiError::invalid("response_format", "json_schema.schema must be a JSON object"));
                }
                Ok(Some(Grammar::JsonSchema { schema, strict: js.strict.unwrap_or(false) }))
            }
            _ => Err(ApiError::invalid(
                "response_format",
                "response_format type must be text, json_object or json_schema",
            )),
        }
    }
}

enum Mode {
    Auto,
    None,
    Required,
    Named(String),
}

/// Turns the model's streamed text into what the client sees: reasoning, content, tool calls.
pub struct Shaper {
    split: Option<ReasoningSplitter>,
    tools: Option<ToolFormat>,
    /// Content held back since it may be (or is) a tool call.
    held: String,
    /// Content handed out so far (Llama 3's format is a call only from the answer's start).
    sent_content: bool,
    /// All reasoning text, for the reasoning token count.
    pub reasoning: String,
}

/// What a piece of the answer adds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Thinking.
    pub reasoning: String,
    /// Answer text.
    pub content: String,
}

impl Shaper {
    /// A shaper for `plan`; `opens_thinking`: the prompt left a `<think>` block open.
    pub fn new(plan_reasoning: bool, tools: Option<ToolFormat>, opens_thinking: bool) -> Self {
        Self {
            split: plan_reasoning.then(|| ReasoningSplitter::new(opens_thinking)),
            tools,
            held: String::new(),
            sent_content: false,
            reasoning: String::new(),
        }
    }

    /// Sorts the next text.
    pub fn push(&mut self, text: &str) -> Delta {
        let pieces = match &mut self.split {
            Some(s) => s.push(text),
            None => vec![Piece::Content(text.to_string())],
        };
        self.take(pieces)
    }

    fn take(&mut self, pieces: Vec<Piece>) -> Delta {
        let mut d = Delta::default();
        for p in pieces {
            match p {
                Piece::Reasoning(t) => {
                    self.reasoning.push_str(&t);
                    d.reasoning.push_str(&t);
                }
                Piece::Content(t) => d.content.push_str(&self.content(&t)),
            }
        }
        d
    }

    /// Content that can go out now; the rest waits in `held`.
    fn content(&mut self, text: &str) -> String {
        let Some(format) = self.tools else { return text.to_string() };
        self.held.push_str(text);
        let keep_from = match format {
            ToolFormat::Hermes => self.held.find(format.opening()).unwrap_or_else(|| {
                self.held.len() - govbox_engine::reasoning::partial_suffix(&self.held, format.opening())
            }),
            // A Llama 3 call is the whole answer: hold an answer that starts like JSON.
            ToolFormat::Llama3Json if !self.sent_content => {
                let lead = self.held.trim_start();
                if lead.is_empty() || lead.starts_with('{') { 0 } else { self.held.len() }
            }
            ToolFormat::Llama3Json => self.held.len(),
        };
        let out: String = self.held.drain(..keep_from).collect();
        self.sent_content |= !out.trim().is_empty();
        out
    }

    /// The end of the answer: the last text and the calls.
    pub fn finish(&mut self) -> (Delta, ParsedAnswer) {
        let rest = self.split.as_mut().map(ReasoningSplitter::finish).unwrap_or_default();
        let mut d = self.take(rest);
        let held = std::mem::take(&mut self.held);
        let parsed = self.tools.map(|f| f.parse(&held)).unwrap_or_default();
        // Held text that holds no call goes out as it was (the parser trims).
        d.content.push_str(if parsed.calls.is_empty() { &held } else { &parsed.content });
        (d, parsed)
    }
}

/// OpenAI's `tool_calls` for `calls`, with ids made from the request id.
pub fn tool_calls_json(calls: &[govbox_engine::tools::ParsedCall], request_id: &str, streamed: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": format!("call_{request_id}_{i}"),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if streamed {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// The finish reason a chat answer reports.
pub fn finish_reason(reason: FinishReason, calls: usize) -> &'static str {
    if calls > 0 && reason == FinishReason::Stop { "tool_calls" } else { reason.as_str() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(s: &mut Shaper, pieces: &[&str]) -> (String, String, usize) {
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            let d = s.push(p);
            r.push_str(&d.reasoning);
            c.push_str(&d.content);
        }
        let (d, parsed) = s.finish();
        r.push_str(&d.reasoning);
        c.push_str(&d.content);
        (r, c, parsed.calls.len())
    }

    #[test]
    fn reasoning_content_and_calls_are_sorted() {
        let mut s = Shaper::new(true, Some(ToolFormat::Hermes), false);
        let (r, c, n) = shape(
            &mut s,
            &[
                "<think>\nweather needs",
                " a tool</think>\n\nChecking.",
                "\n<tool_",
                "call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call>",
            ],
        );
        assert_eq!((r.as_str(), c.as_str(), n), ("weather needs a tool", "Checking.\n", 1));
        let mut s = Shaper::new(false, Some(ToolFormat::Hermes), false);
        assert_eq!(
            shape(&mut s, &["a <tool", "_cal", "l> is a tag"]),
            (String::new(), "a <tool_call> is a tag".into(), 0)
        );
        let mut s = Shaper::new(false, None, false);
        assert_eq!(shape(&mut s, &["<think>x</think>"]), (String::new(), "<think>x</think>".into(), 0));
    }
}
