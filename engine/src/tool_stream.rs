//! Tool calls as they are generated: a call's name as soon as it is complete, then its
//! arguments' JSON text piece by piece, the way OpenAI streams `tool_calls` deltas.
//!
//! [`CallTracker`] reads the answer's held-back text (from a call's opening on) after each new
//! piece, finds the calls written so far in the family's format, and hands out what is new: a
//! call's start once its name is whole, then the bytes of its arguments object not yet sent.
//! The arguments go out as the model wrote them (a prefix of a JSON object each time), so that
//! the client's concatenation is the object's text. The JSON walk below only finds where
//! strings, objects and arrays end; whether the call parses is [`ToolFormat::parse`]'s to say
//! at the end, which also supplies the calls this walk cannot stream (arguments written as a
//! JSON string, Llama 3's lists).

use crate::tools::{
    DS_CALL_BEGIN, DS_CALL_END, DS_SEP, HERMES_CLOSE, HERMES_OPEN, ParsedAnswer, ToolFormat, is_function_name,
};

/// A call as far as the text shows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PartialCall<'a> {
    /// The name, once it is whole.
    pub name: Option<String>,
    /// The arguments object's text so far (`None`: not begun, or not an object).
    pub args: Option<&'a str>,
}

/// What a piece of the answer adds to one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallDelta {
    /// The call's place among the answer's calls.
    pub index: usize,
    /// The name, in the call's first delta only.
    pub name: Option<String>,
    /// More of the arguments' text (empty in a first delta that has none yet).
    pub arguments: String,
}

/// End (exclusive) of the JSON string that starts at `b[i]` (a quote), if it is whole.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End (exclusive) of the JSON value that starts at `b[i]`, if it is whole. Scalars end at the
/// first delimiter, so one at the very end of the text is not yet whole.
fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => (i..b.len()).find(|&j| matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')),
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The object `{"name": …, "arguments" | "parameters": {…}}` at the start of `s` (after
/// whitespace), as far as it goes.
fn json_call(s: &str) -> PartialCall<'_> {
    let b = s.as_bytes();
    let mut out = PartialCall::default();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return out;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return out;
        }
        let Some(key_end) = string_end(b, i) else { return out };
        let key = serde_json::from_str::<String>(&s[i..key_end]).unwrap_or_default();
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return out;
        }
        let start = skip_ws(b, i + 1);
        if start >= b.len() {
            return out;
        }
        let end = value_end(b, start);
        // The first of a repeated key counts: what went out cannot be taken back.
        match key.as_str() {
            "name" if out.name.is_none() => {
                out.name = end.and_then(|e| serde_json::from_str::<String>(&s[start..e]).ok());
            }
            "arguments" | "parameters" if out.args.is_none() && b[start] == b'{' => {
                out.args = Some(&s[start..end.unwrap_or(b.len())]);
            }
            _ => {}
        }
        let Some(end) = end else { return out };
        i = skip_ws(b, end);
        if b.get(i) != Some(&b',') {
            return out;
        }
        i += 1;
    }
}

/// A name on a line of its own, then a JSON object (DeepSeek's and GLM-4's calls): a call
/// only once the object has begun, since a GLM-4 answer's first line may be a plain word.
fn name_then_object<'a>(name: &str, rest: &'a str) -> PartialCall<'a> {
    let b = rest.as_bytes();
    let start = skip_ws(b, 0);
    if !is_function_name(name) || b.get(start) != Some(&b'{') {
        return PartialCall::default();
    }
    let args = Some(&rest[start..value_end(b, start).unwrap_or(b.len())]);
    PartialCall { name: Some(name.to_string()), args }
}

/// The bodies of the calls between `open` and `close` markers (the last may be open still).
fn bodies<'a>(text: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    text.split(open).skip(1).map(|b| b.split(close).next().unwrap_or(b)).collect()
}

/// One DeepSeek call's body so far.
fn deepseek_partial(body: &str) -> PartialCall<'_> {
    let Some((head, rest)) = body.split_once(DS_SEP) else { return PartialCall::default() };
    if head.trim() != "function" {
        return name_then_object(head.trim(), rest);
    }
    let Some((name, rest)) = rest.split_once('\n') else { return PartialCall::default() };
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("```json").or_else(|| rest.strip_prefix("```")).unwrap_or(rest);
    name_then_object(name.trim(), rest)
}

/// The calls written so far in `text` (the held text, from the first opening on).
pub fn partial_calls(format: ToolFormat, text: &str) -> Vec<PartialCall<'_>> {
    match format {
        ToolFormat::Hermes => bodies(text, HERMES_OPEN, HERMES_CLOSE).into_iter().map(json_call).collect(),
        ToolFormat::Llama3Json => {
            let t = text.trim_start();
            vec![json_call(t.strip_prefix("<|python_tag|>").unwrap_or(t))]
        }
        ToolFormat::DeepSeek => bodies(text, DS_CALL_BEGIN, DS_CALL_END).into_iter().map(deepseek_partial).collect(),
        ToolFormat::Glm4 => match text.split_once('\n') {
            Some((name, rest)) => vec![name_then_object(name.trim_end(), rest)],
            None => vec![],
        },
    }
}

/// Hands out each call's start and arguments as they grow.
#[derive(Debug)]
pub struct CallTracker {
    format: ToolFormat,
    /// Per started call, the bytes of its arguments sent so far.
    sent: Vec<usize>,
}

impl CallTracker {
    /// A tracker for answers in `format`.
    pub fn new(format: ToolFormat) -> Self {
        Self { format, sent: Vec::new() }
    }

    /// How many calls have been started.
    pub fn count(&self) -> usize {
        self.sent.len()
    }

    /// What `text` (the held text, which only ever grows at its end) adds since the last call.
    pub fn update(&mut self, text: &str) -> Vec<CallDelta> {
        let mut out = Vec::new();
        for (index, call) in partial_calls(self.format, text).into_iter().enumerate() {
            if index == self.sent.len() {
                // Calls start in order, each once its name is whole.
                let Some(name) = call.name else { break };
                out.push(CallDelta { index, name: Some(name), arguments: String::new() });
                self.sent.push(0);
            }
            let sent = &mut self.sent[index];
            if let Some(args) = call.args.filter(|a| a.len() > *sent && a.is_char_boundary(*sent)) {
                out.push(CallDelta { index, name: None, arguments: args[*sent..].to_string() });
                *sent = args.len();
            }
        }
        out
    }

    /// The last deltas, given the whole held text and its parse: what the walk still finds,
    /// arguments it could not stream (taken from the parse), and, when it found no call at
    /// all, the parse's calls whole.
    pub fn finish(&mut self, text: &str, parsed: &ParsedAnswer) -> Vec<CallDelta> {
        let mut out = self.update(text);
        if self.sent.is_empty() {
            for (index, c) in parsed.calls.iter().enumerate() {
                out.push(CallDelta { index, name: Some(c.name.clone()), arguments: c.arguments.clone() });
                self.sent.push(c.arguments.len());
            }
            return out;
        }
        for (index, sent) in self.sent.iter_mut().enumerate().filter(|(_, s)| **s == 0) {
            let args = parsed.calls.get(index).map_or("{}", |c| c.arguments.as_str());
            out.push(CallDelta { index, name: None, arguments: args.to_string() });
            *sent = args.len();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `step` bytes (at character boundaries) and joins the deltas
    /// per call: (name, arguments, number of argument deltas).
    fn stream(format: ToolFormat, text: &str, step: usize) -> Vec<(String, String, usize)> {
        let mut t = CallTracker::new(format);
        let mut calls: Vec<(String, String, usize)> = Vec::new();
        let mut take = |ds: Vec<CallDelta>| {
            for d in ds {
                if let Some(n) = d.name {
                    assert_eq!(d.index, calls.len(), "calls start in order");
                    calls.push((n, String::new(), 0));
                }
                if !d.arguments.is_empty() {
                    calls[d.index].1.push_str(&d.arguments);
                    calls[d.index].2 += 1;
                }
            }
        };
        let mut end = 0;
        while end < text.len() {
            end = (end + step).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            take(t.update(&text[..end]));
        }
        take(t.finish(text, &format.parse(text)));
        calls
    }

    fn args_of(calls: &[(String, String, usize)]) -> Vec<(String, serde_json::Value)> {
        calls.iter().map(|(n, a, _)| (n.clone(), serde_json::from_str(a).unwrap())).collect()
    }

    #[test]
    fn every_format_streams_names_first_then_argument_pieces() {
        let cases = [
            (
                ToolFormat::Hermes,
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}\"}}\n</tool_call>\n\
                 <tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"utc\": true}}\n</tool_call>",
            ),
            (ToolFormat::Llama3Json, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"巴黎\"}}"),
            (
                ToolFormat::DeepSeek,
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n\
                 {\"city\": [1, {\"a\": \"}\"}]}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n\
                 ```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            ),
            (ToolFormat::Glm4, "get_weather\n{\"city\": \"Paris\", \"days\": 3}"),
        ];
        for (format, text) in cases {
            let whole = format.parse(text);
            assert!(!whole.calls.is_empty(), "{format:?}");
            for step in [1, 3, 7, 1000] {
                let calls = stream(format, text, step);
                let want: Vec<(String, serde_json::Value)> =
                    whole.calls.iter().map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap())).collect();
                assert_eq!(args_of(&calls), want, "{format:?} in pieces of {step}");
                if step == 1 {
                    // Byte by byte, the arguments arrive in many pieces, not at the end.
                    assert!(calls[0].2 > 5, "{format:?}: {calls:?}");
                }
            }
        }
    }

    #[test]
    fn what_the_walk_cannot_stream_comes_whole_at_the_end() {
        // Arguments as a JSON string: the name streams, the arguments come from the parse.
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>";
        assert_eq!(stream(ToolFormat::Hermes, text, 2), vec![("f".into(), "{\"a\": 1}".into(), 1)]);
        // A Llama 3 list of calls.
        let text = "[{\"name\": \"f\", \"parameters\": {}}, {\"name\": \"g\", \"parameters\": {\"x\": 1}}]";
        let calls = stream(ToolFormat::Llama3Json, text, 4);
        assert_eq!(calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["f", "g"]);
        // No arguments at all: "{}".
        assert_eq!(stream(ToolFormat::Hermes, "<tool_call>{\"name\": \"f\"}", 3), vec![("f".into(), "{}".into(), 1)]);
        // A GLM-4 plain answer starts with a newline: no call.
        assert!(stream(ToolFormat::Glm4, "\nThe weather is fine.", 2).is_empty());
        assert!(stream(ToolFormat::Glm4, "Sure thing\n{}", 2).is_empty());
    }
}
