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
use govbox_engine::tool_stream::{CallDelta, CallTracker};
use govbox_engine::tools::{MAX_FUNCTION_NAME, ParsedAnswer, TemplateTools, ToolFormat, ToolSpec, is_function_name};
use govbox_engine::{Engine, FinishReason, Prompt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::error::ApiError;

/// At most this many tools per request.
const MAX_TOOLS: usize = 128;

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
    if is_function_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(param, format!("a function name must match ^[a-zA-Z0-9_-]{{1,{MAX_FUNCTION_NAME}}}$")))
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
            input = tt.prepare(&input);
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
    /// The calls streamed out of `held` so far (streamed answers only: see [`Self::for_stream`]).
    calls: Option<CallTracker>,
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
    /// Tool calls begun and their arguments' next pieces.
    pub calls: Vec<CallDelta>,
}

impl Shaper {
    /// A shaper for `plan`; `opens_thinking`: the prompt left a `<think>` block open.
    pub fn new(plan_reasoning: bool, tools: Option<ToolFormat>, opens_thinking: bool) -> Self {
        Self {
            split: plan_reasoning.then(|| ReasoningSplitter::new(opens_thinking)),
            tools,
            held: String::new(),
            calls: None,
            sent_content: false,
            reasoning: String::new(),
        }
    }

    /// The same for a streamed answer: calls go out piece by piece as they grow, so a call cut
    /// off (by `max_tokens`) stays a call; in a whole answer, text that is no whole call is content.
    pub fn for_stream(mut self) -> Self {
        self.calls = self.tools.map(CallTracker::new);
        self
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
        if let Some(tracker) = self.calls.as_mut().filter(|_| !self.held.is_empty()) {
            d.calls = tracker.update(&self.held);
        }
        d
    }

    /// How many tool calls have gone out (streamed).
    pub fn calls_streamed(&self) -> usize {
        self.calls.as_ref().map_or(0, CallTracker::count)
    }

    /// Content that can go out now; the rest waits in `held`.
    fn content(&mut self, text: &str) -> String {
        let Some(format) = self.tools else { return text.to_string() };
        self.held.push_str(text);
        let keep_from = if self.calls_streamed() > 0 {
            0
        } else if format.marked() {
            self.held.find(format.opening()).unwrap_or_else(|| {
                self.held.len() - govbox_engine::reasoning::partial_suffix(&self.held, format.opening())
            })
        } else if !self.sent_content && may_be_call(format, &self.held) {
            // A call is the whole answer: hold an answer that starts like one.
            0
        } else {
            self.held.len()
        };
        let out: String = self.held.drain(..keep_from).collect();
        self.sent_content |= !out.trim().is_empty();
        out
    }

    /// The end of the answer: the last text and calls, and the calls as parsed from the whole
    /// held text.
    pub fn finish(&mut self) -> (Delta, ParsedAnswer) {
        let rest = self.split.as_mut().map(ReasoningSplitter::finish).unwrap_or_default();
        let mut d = self.take(rest);
        let held = std::mem::take(&mut self.held);
        let parsed = self.tools.map(|f| f.parse(&held)).unwrap_or_default();
        if let Some(tracker) = &mut self.calls {
            d.calls.extend(tracker.finish(&held, &parsed));
        }
        // Held text that holds no call goes out as it was (the parser trims); text that went out
        // as a call's pieces does not come again as content.
        let content = match (parsed.calls.is_empty(), self.calls_streamed()) {
            (false, _) => parsed.content.as_str(),
            (true, 0) => held.as_str(),
            (true, _) => "",
        };
        d.content.push_str(content);
        (d, parsed)
    }
}

/// Whether an answer that begins with `held` may be a call in a format whose call is the
/// whole answer (Llama 3's JSON, GLM-4's name line and JSON).
fn may_be_call(format: ToolFormat, held: &str) -> bool {
    match format {
        ToolFormat::Glm4 => match held.split_once('\n') {
            None => held.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            Some((name, rest)) => {
                let rest = rest.trim_start();
                is_function_name(name.trim_end()) && (rest.is_empty() || rest.starts_with('{'))
            }
        },
        _ => {
            let lead = held.trim_start();
            lead.is_empty() || lead.starts_with('{')
        }
    }
}

/// The id of a request's `index`th call.
pub fn call_id(request_id: &str, index: usize) -> String {
    format!("call_{request_id}_{index}")
}

/// OpenAI's `tool_calls` for `calls`, with ids made from the request id.
pub fn tool_calls_json(calls: &[govbox_engine::tools::ParsedCall], request_id: &str) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "id": call_id(request_id, i),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect(),
    )
}

/// A streamed `tool_calls` delta in OpenAI's shape: the first of a call carries its index, id,
/// type and name; the others its index and the next piece of the arguments.
pub fn tool_call_delta(d: &CallDelta, request_id: &str) -> Value {
    let item = match &d.name {
        Some(name) => json!({
            "index": d.index,
            "id": call_id(request_id, d.index),
            "type": "function",
            "function": {"name": name, "arguments": d.arguments},
        }),
        None => json!({"index": d.index, "function": {"arguments": d.arguments}}),
    };
    json!({"tool_calls": [item]})
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

    /// Streams `answer` a few characters at a time: the content, and per call its name, its
    /// arguments joined, and how many pieces they came in.
    fn stream(format: ToolFormat, answer: &str) -> (String, Vec<(String, String, usize)>, usize) {
        let mut s = Shaper::new(false, Some(format), false).for_stream();
        let (mut content, mut calls) = (String::new(), Vec::<(String, String, usize)>::new());
        let mut take = |d: Delta, content: &mut String| {
            content.push_str(&d.content);
            for c in d.calls {
                if let Some(n) = c.name {
                    calls.push((n, String::new(), 0));
                }
                if !c.arguments.is_empty() {
                    calls[c.index].1.push_str(&c.arguments);
                    calls[c.index].2 += 1;
                }
            }
        };
        let chars: Vec<char> = answer.chars().collect();
        for piece in chars.chunks(3) {
            let d = s.push(&piece.iter().collect::<String>());
            take(d, &mut content);
        }
        let (d, _) = s.finish();
        take(d, &mut content);
        (content, calls, s.calls_streamed())
    }

    #[test]
    fn calls_stream_as_a_name_then_argument_pieces_in_every_format() {
        let answers = [
            (
                ToolFormat::Hermes,
                "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            ),
            (ToolFormat::Llama3Json, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"),
            (
                ToolFormat::DeepSeek,
                "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n\
                 {\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            ),
            (ToolFormat::Glm4, "get_weather\n{\"city\": \"Paris\"}"),
        ];
        for (format, answer) in answers {
            let (content, calls, n) = stream(format, answer);
            let want_content = if format.marked() { "Checking.\n" } else { "" };
            assert_eq!(content.trim(), want_content.trim(), "{format:?}");
            assert_eq!(n, 1, "{format:?}");
            assert_eq!(calls[0].0, "get_weather", "{format:?}");
            let args: Value = serde_json::from_str(&calls[0].1).unwrap();
            assert_eq!(args, json!({"city": "Paris"}), "{format:?}");
            assert!(calls[0].2 >= 4, "{format:?}: arguments in {} pieces", calls[0].2);
        }
        // A GLM-4 plain answer (it starts with a newline) and one-line text are content.
        assert_eq!(stream(ToolFormat::Glm4, "\nIt is sunny.").0, "\nIt is sunny.");
        assert_eq!(stream(ToolFormat::Glm4, "Sunny").0, "Sunny");
        assert_eq!(stream(ToolFormat::Glm4, "Sure\nIt is sunny.").0, "Sure\nIt is sunny.");
        assert_eq!(stream(ToolFormat::Glm4, "Sure thing\n{}").0, "Sure thing\n{}");
    }
}
