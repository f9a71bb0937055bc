//! Token log-probabilities in OpenAI's two shapes: chat's `logprobs.content[]` entries and the
//! legacy completions' parallel arrays.

use govbox_engine::logprobs::{Alternative, TokenLogprob};
use serde_json::{Value, json};

/// A log-probability as JSON: JSON has no -∞, so a token the model rules out gets OpenAI's
/// -9999.0.
fn num(x: f32) -> f64 {
    if x.is_finite() { x as f64 } else { -9999.0 }
}

fn alternative(a: &Alternative) -> Value {
    json!({"token": a.token, "logprob": num(a.logprob), "bytes": a.token.as_bytes()})
}

/// Chat's `logprobs` object for these tokens.
pub fn chat(entries: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|t| {
            let mut v = alternative(&t.chosen);
            v["top_logprobs"] = t.top.iter().map(alternative).collect();
            v
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The completions `logprobs` object for these tokens; `offset` is where the first token's
/// text begins in the choice's text (in characters), and moves past them.
pub fn completion(entries: &[TokenLogprob], offset: &mut usize) -> Value {
    completion_with_prompt(None, entries, offset)
}

/// The same with the prompt in front (`echo`): `prompt` is the first prompt token's text, which
/// nothing predicts (its log-probability and alternatives are null, as OpenAI writes them), then
/// the entries of the prompt's other tokens, which `entries` begins with.
pub fn completion_with_prompt(first: Option<&str>, entries: &[TokenLogprob], offset: &mut usize) -> Value {
    let n = entries.len() + usize::from(first.is_some());
    let (mut tokens, mut lps, mut tops, mut offsets) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    if let Some(t) = first {
        tokens.push(t);
        lps.push(Value::Null);
        tops.push(Value::Null);
        offsets.push(*offset);
        *offset += t.chars().count();
    }
    for t in entries {
        tokens.push(t.chosen.token.as_str());
        lps.push(json!(num(t.chosen.logprob)));
        tops.push(Value::Object(t.top.iter().map(|a| (a.token.clone(), json!(num(a.logprob)))).collect()));
        offsets.push(*offset);
        *offset += t.chosen.token.chars().count();
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tok: &str, lp: f32, top: &[(&str, f32)]) -> TokenLogprob {
        let alt = |t: &str, l| Alternative { token: t.into(), logprob: l };
        TokenLogprob { chosen: alt(tok, lp), top: top.iter().map(|&(t, l)| alt(t, l)).collect() }
    }

    #[test]
    fn both_shapes() {
        let entries = [e("Hi", -0.5, &[("Hi", -0.5), ("Yo", -1.5)]), e(" 你", f32::NEG_INFINITY, &[])];
        let c = chat(&entries);
        assert_eq!(c["content"][0]["token"], "Hi");
        assert_eq!(c["content"][0]["bytes"], json!([72, 105]));
        assert_eq!(c["content"][0]["top_logprobs"][1]["logprob"], -1.5);
        assert_eq!(c["content"][1]["logprob"], -9999.0);
        assert_eq!(c["content"][1]["top_logprobs"], json!([]));
        let mut off = 3;
        let v = completion(&entries, &mut off);
        assert_eq!(v["tokens"], json!(["Hi", " 你"]));
        assert_eq!(v["text_offset"], json!([3, 5]));
        assert_eq!(off, 7);
        assert_eq!(v["top_logprobs"][0]["Yo"], -1.5);
        // With the prompt in front: the first token's log-probability and alternatives are null.
        let mut off = 0;
        let v = completion_with_prompt(Some("A"), &entries, &mut off);
        assert_eq!(v["tokens"], json!(["A", "Hi", " 你"]));
        assert_eq!(v["token_logprobs"], json!([null, -0.5, -9999.0]));
        assert_eq!(v["top_logprobs"][0], Value::Null);
        assert_eq!(v["text_offset"], json!([0, 1, 3]));
    }
}
