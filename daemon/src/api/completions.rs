//! `POST /v1/completions`: plain text in, its continuation out, whole or streamed. A prompt may
//! be a string, a list of strings, a token-id array or a list of those; each prompt gets `n`
//! choices. `echo` puts the prompt before the answer; `suffix` asks for fill-in-the-middle,
//! served where the tokenizer has FIM tokens.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use govbox_engine::logprobs::{MAX_TOP_LOGPROBS, TokenLogprob};
use govbox_engine::tokenizer::Tokenizer;
use govbox_engine::{FinishReason, Prompt, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::generate::{self, Accepted, ChunkHead, MAX_CHOICES, SamplingFields, unix_now, usage_json};
use crate::api::stream::ChunkMaker;
use crate::api::{Call, audit_request_by, body, fields, json, logprobs};
use crate::auth;
use crate::models::ModelKind;
use crate::state::AppState;

/// Most prompts in one request.
const MAX_PROMPTS: usize = 16;
/// Most choices in one request (prompts × `n`): what one request may add to the batch.
const MAX_REQUEST_CHOICES: usize = 4 * MAX_CHOICES;

/// `prompt`: a string, a list of strings, token ids, or a list of token-id lists.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged, expecting = "a string, an array of strings, an array of token ids or an array of such arrays")]
enum PromptSpec {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// The request body, less the sampling fields (read from the same JSON as [`SamplingFields`]);
/// unknown fields are ignored, meaning-changing ones refused.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: PromptSpec,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
    best_of: Option<u32>,
    logprobs: Option<u32>,
}

/// One prompt as given: text, or token ids.
enum Given {
    Text(String),
    Ids(Vec<u32>),
}

fn prompts(req: &CompletionRequest) -> Result<Vec<Given>, ApiError> {
    let list: Vec<Given> = match &req.prompt {
        PromptSpec::One(s) => vec![Given::Text(s.clone())],
        PromptSpec::Many(v) => v.iter().cloned().map(Given::Text).collect(),
        PromptSpec::Tokens(ids) => vec![Given::Ids(ids.clone())],
        PromptSpec::TokenLists(v) => v.iter().cloned().map(Given::Ids).collect(),
    };
    if list.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must hold at least one prompt"));
    }
    if list.len() > MAX_PROMPTS {
        return Err(ApiError::invalid("prompt", format!("at most {MAX_PROMPTS} prompts are allowed per request")));
    }
    Ok(list)
}

/// The fields that only some requests may combine, checked before any work.
fn check_options(req: &CompletionRequest, n: usize, prompts: usize) -> Result<(), ApiError> {
    if req.best_of.is_some_and(|b| b as usize != n) {
        return Err(ApiError::invalid("best_of", "best_of must equal n (answers are not ranked on the server)"));
    }
    if req.logprobs.is_some_and(|k| k as usize > MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid("logprobs", format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}")));
    }
    if req.echo && req.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "suffix and echo cannot be combined"));
    }
    if prompts * n > MAX_REQUEST_CHOICES {
        return Err(ApiError::invalid(
            "n",
            format!("prompts × n is {}; at most {MAX_REQUEST_CHOICES} choices per request", prompts * n),
        ));
    }
    Ok(())
}

/// The fill-in-the-middle markers a tokenizer knows, in the two spellings models use
/// (StarCoder's `<fim_prefix>`, Qwen2.5-Coder's `<|fim_prefix|>`): prefix, suffix, middle.
fn fim_ids(tok: &Tokenizer) -> Option<[u32; 3]> {
    [["<fim_prefix>", "<fim_suffix>", "<fim_middle>"], ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]]
        .iter()
        .find_map(|names| Some([tok.token_to_id(names[0])?, tok.token_to_id(names[1])?, tok.token_to_id(names[2])?]))
}

/// The engine prompt of one given prompt. Special-token strings are text unless the client
/// was added with --allow-special-tokens; token ids of control tokens likewise.
fn engine_prompt(
    tok: &Tokenizer,
    given: &Given,
    suffix: Option<&str>,
    allow_special: bool,
) -> Result<Prompt, ApiError> {
    if let Some(suffix) = suffix {
        let Given::Text(prefix) = given else {
            return Err(ApiError::invalid("suffix", "suffix needs a text prompt, not token ids"));
        };
        let Some([pre, suf, mid]) = fim_ids(tok) else {
            return Err(ApiError::invalid(
                "suffix",
                "this model's tokenizer has no fill-in-the-middle tokens (<fim_prefix> or <|fim_prefix|>), so \
                 suffix cannot be honoured",
            ));
        };
        let mut ids: Vec<u32> = tok.add_bos().then(|| tok.bos_id()).flatten().into_iter().collect();
        ids.push(pre);
        ids.extend(tok.encode_plain(prefix)?);
        ids.push(suf);
        ids.extend(tok.encode_plain(suffix)?);
        ids.push(mid);
        return Ok(Prompt::Tokens(ids));
    }
    Ok(match given {
        Given::Text(t) if allow_special => Prompt::TextWithSpecialTokens(t.clone()),
        Given::Text(t) => Prompt::Text(t.clone()),
        Given::Ids(ids) => {
            if !allow_special && let Some(id) = ids.iter().find(|&&id| tok.is_special(id)) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "token id {id} is a control token; this client may not send control tokens \
                         (govbox client add --allow-special-tokens)"
                    ),
                ));
            }
            Prompt::Tokens(ids.clone())
        }
    })
}

/// The handler.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let body = body::read_value(&call.headers, call.body, &state.config.limits).await?;
    let req: CompletionRequest = fields::from_value(&body)?;
    let sampling: SamplingFields = fields::from_value(&body)?;
    let model = state.model(&req.model)?;
    call.record.set_model(&model.name);
    if model.kind != ModelKind::Chat {
        return Err(ApiError::WrongModelKind {
            model: model.name.clone(),
            is: "an embedding model",
            endpoint: "/v1/completions",
            needs: "a text generation model",
        });
    }
    auth::authorise(&state, &client, &model)?;
    let given = prompts(&req)?;
    let n = sampling.choices()?;
    check_options(&req, n, given.len())?;
    let tok = model.engine.tokenizer();
    let mut engine_prompts = given
        .iter()
        .map(|g| engine_prompt(tok, g, req.suffix.as_deref(), client.allow_special_tokens))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let first = engine_prompts.next().ok_or_else(|| ApiError::Internal("no prompt".into()))?;
    let mut request = sampling.to_request(first, state.config.serving.default_max_tokens)?;
    request.sampling.logprobs = req.logprobs.map(|k| k as usize);
    let request_top = request.sampling.logprobs;
    let with_logprobs = request_top.is_some();
    // The audited prompt: a single text as its bytes (as before lists were accepted), anything
    // else as its JSON, with the suffix when there is one.
    let audited = match (&req.prompt, &req.suffix) {
        (PromptSpec::One(s), None) => s.clone().into_bytes(),
        (p, suffix) => serde_json::to_vec(&json!({"prompt": p, "suffix": suffix}))
            .map_err(|e| ApiError::Internal(format!("encoding the prompt: {e}")))?,
    };
    // Every prompt (and the suffix) goes through the box's content policy, as text.
    let mut checked = given
        .iter()
        .map(|g| match g {
            Given::Text(t) => Ok(t.clone()),
            Given::Ids(ids) => tok.decode(ids, false),
        })
        .collect::<Result<Vec<_>, _>>()?;
    checked.extend(req.suffix.clone());
    let checked: Vec<&str> = checked.iter().map(String::as_str).collect();
    let policy = crate::api::policy::check_input(&state, &call.record, &client, "prompt", &checked).await?;
    generate::check_logit_bias(&model, &request)?;
    audit_request_by(&state, &call.record, &client.name, &model, &audited, sampling.user.as_deref()).await?;
    let acc = Accepted {
        model: model.clone(),
        request,
        more_prompts: engine_prompts.collect(),
        n,
        client: client.clone(),
        record: call.record.clone(),
        prompt_param: "prompt",
        prefix_cache: generate::prefix_cache_for(state.config.serving.prefix_cache, &client),
    };
    let started = generate::start(&state, acc).await?;
    let started = crate::api::policy::filter_output(&state, policy, &client.name, &call.record, started);
    // With echo, each choice begins with its prompt's text.
    let echoes: Vec<String> = if req.echo {
        let texts = given.iter().zip(&started.prompt_ids).map(|(g, ids)| match g {
            Given::Text(t) => Ok(t.clone()),
            Given::Ids(_) => tok.decode(ids, false),
        });
        let texts = texts.collect::<Result<Vec<_>, _>>()?;
        texts.iter().flat_map(|t| std::iter::repeat_n(t.clone(), n)).collect()
    } else {
        vec![]
    };
    // With echo and logprobs, each choice's logprobs begin with its prompt's.
    let prompt_lps = match (req.echo, request_top) {
        (true, Some(k)) => prompt_logprobs(&model.engine, &started.prompt_ids, k, n).await?,
        _ => vec![],
    };
    let id = format!("cmpl-{}", call.record.id.trim_start_matches("req-"));
    let created = unix_now();
    if sampling.stream {
        let head = ChunkHead {
            id,
            object: "text_completion",
            created,
            model: model.name.clone(),
            include_usage: sampling.include_usage(),
        };
        let offsets = vec![0; started.choices];
        let maker = Chunks { head, with_logprobs, echoes, prompt_lps, offsets };
        return Ok(generate::stream_response(started, maker));
    }
    let done = generate::collect(started).await?;
    let choices: Vec<Value> = done
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let echo = echoes.get(i).map_or("", String::as_str);
            let lp = with_logprobs.then(|| match prompt_lps.get(i) {
                Some(p) => {
                    logprobs::completion_with_prompt(p.first.as_deref(), &[&p.rest[..], &c.logprobs].concat(), &mut 0)
                }
                None => logprobs::completion(&c.logprobs, &mut 0),
            });
            json!({
                "index": i,
                "text": format!("{echo}{}", c.text),
                "logprobs": lp,
                "finish_reason": c.finish_reason.map(FinishReason::as_str),
            })
        })
        .collect();
    Ok(json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model.name,
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage_json(done.usage),
    })))
}

/// A prompt's log-probabilities: its first token's text (nothing predicts it), then the
/// entries of the others.
#[derive(Clone)]
struct PromptLogprobs {
    first: Option<String>,
    rest: Vec<TokenLogprob>,
}

/// Each choice's prompt log-probabilities (`n` choices per prompt), computed off the async
/// threads.
async fn prompt_logprobs(
    engine: &Arc<govbox_engine::Engine>,
    prompts: &[Vec<u32>],
    top: usize,
    n: usize,
) -> Result<Vec<PromptLogprobs>, ApiError> {
    let (engine, prompts) = (engine.clone(), prompts.to_vec());
    let per_prompt = tokio::task::spawn_blocking(move || {
        prompts
            .iter()
            .map(|ids| {
                let first = ids.first().map(|&id| engine.tokenizer().decode(&[id], false)).transpose()?;
                Ok(PromptLogprobs { first, rest: engine.prompt_logprobs(ids, top)? })
            })
            .collect::<Result<Vec<_>, govbox_engine::EngineError>>()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("prompt log-probabilities task: {e}")))??;
    Ok(per_prompt.into_iter().flat_map(|p| std::iter::repeat_n(p, n)).collect())
}

/// The chunks of a streamed completion.
struct Chunks {
    head: ChunkHead,
    with_logprobs: bool,
    /// Each choice's echoed prompt (empty without `echo`), sent as its first chunk.
    echoes: Vec<String>,
    /// With `echo` and `logprobs`, each choice's prompt log-probabilities, sent with the echo.
    prompt_lps: Vec<PromptLogprobs>,
    /// Where each choice's next token begins in its text, for `text_offset`.
    offsets: Vec<usize>,
}

impl ChunkMaker for Chunks {
    fn opening(&mut self, index: usize) -> Option<Value> {
        let echo = self.echoes.get(index)?;
        let lp = self
            .prompt_lps
            .get(index)
            .map(|p| logprobs::completion_with_prompt(p.first.as_deref(), &p.rest, &mut self.offsets[index]));
        Some(self.head.chunk(json!([{"index": index, "text": echo, "logprobs": lp, "finish_reason": null}])))
    }

    fn text(&mut self, index: usize, text: &str, lp: &[TokenLogprob]) -> Vec<Value> {
        let lp = self.with_logprobs.then(|| logprobs::completion(lp, &mut self.offsets[index]));
        vec![self.head.chunk(json!([{"index": index, "text": text, "logprobs": lp, "finish_reason": null}]))]
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<Value> {
        vec![self.head.chunk(json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason.as_str()}]))]
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        self.head.usage(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<(CompletionRequest, SamplingFields), ApiError> {
        let v = body::parse_value(v.to_string().as_bytes())?;
        Ok((fields::from_value(&v)?, fields::from_value(&v)?))
    }

    #[test]
    fn prompt_lists_and_options_name_their_field() {
        let count = |v: Value| prompts(&parse(v).unwrap().0).map(|p| p.len());
        assert_eq!(count(json!({"model": "m", "prompt": "hi"})).unwrap(), 1);
        assert_eq!(count(json!({"model": "m", "prompt": ["a", "b"]})).unwrap(), 2);
        assert_eq!(count(json!({"model": "m", "prompt": [1, 2, 3]})).unwrap(), 1);
        assert_eq!(count(json!({"model": "m", "prompt": [[1, 2], [3]]})).unwrap(), 2);
        assert_eq!(count(json!({"model": "m", "prompt": []})).unwrap_err().param(), Some("prompt"));
        let e = parse(json!({"model": "m", "prompt": [1, "a"]})).err().unwrap();
        assert_eq!((e.param(), e.code()), (Some("prompt"), "invalid_type"));
        let e = parse(json!({"model": "m"})).err().unwrap();
        assert_eq!(e.param(), Some("prompt"));
        let check = |v: Value| {
            let (r, s) = parse(v).unwrap();
            check_options(&r, s.choices()?, prompts(&r)?.len())
        };
        assert!(check(json!({"model": "m", "prompt": "a", "echo": true, "n": 2, "best_of": 2})).is_ok());
        assert_eq!(check(json!({"model": "m", "prompt": "a", "best_of": 3})).unwrap_err().param(), Some("best_of"));
        assert_eq!(check(json!({"model": "m", "prompt": "a", "logprobs": 21})).unwrap_err().param(), Some("logprobs"));
        assert!(check(json!({"model": "m", "prompt": "a", "logprobs": 2, "echo": true})).is_ok());
        let e = check(json!({"model": "m", "prompt": vec!["a"; 5], "n": 8})).unwrap_err();
        assert_eq!(e.param(), Some("n"));
    }

    /// tiny-qwen2's tokenizer, with Qwen2.5-Coder's three FIM tokens added when `fim`.
    fn tokenizer(fim: bool) -> Tokenizer {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2");
        let dir = tempfile::tempdir().unwrap();
        let mut t: Value = serde_json::from_slice(&std::fs::read(src.join("tokenizer.json")).unwrap()).unwrap();
        let added = t["added_tokens"].as_array_mut().unwrap();
        let next = added.iter().map(|a| a["id"].as_u64().unwrap()).max().unwrap() + 1;
        if fim {
            for (i, name) in ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"].iter().enumerate() {
                added.push(json!({"id": next + i as u64, "content": name, "single_word": false, "lstrip": false,
                                  "rstrip": false, "normalized": false, "special": true}));
            }
        }
        std::fs::write(dir.path().join("tokenizer.json"), t.to_string()).unwrap();
        std::fs::copy(src.join("tokenizer_config.json"), dir.path().join("tokenizer_config.json")).unwrap();
        Tokenizer::from_hf_dir(dir.path()).unwrap()
    }

    #[test]
    fn suffix_is_fill_in_the_middle_where_the_tokenizer_can() {
        let tok = tokenizer(true);
        let [pre, suf, mid] = fim_ids(&tok).unwrap();
        let given = Given::Text("def add(a, b):".into());
        let Prompt::Tokens(ids) = engine_prompt(&tok, &given, Some("    return c"), false).unwrap() else {
            panic!("a FIM prompt is token ids")
        };
        let mut want = vec![pre];
        want.extend(tok.encode_plain("def add(a, b):").unwrap());
        want.push(suf);
        want.extend(tok.encode_plain("    return c").unwrap());
        want.push(mid);
        assert_eq!(ids, want);
        let e = engine_prompt(&tok, &Given::Ids(vec![5]), Some("x"), false).unwrap_err();
        assert_eq!(e.param(), Some("suffix"));
        // Without FIM tokens: a 400 naming suffix, not a silently ignored field.
        let e = engine_prompt(&tokenizer(false), &given, Some("x"), false).unwrap_err();
        assert_eq!((e.param(), e.status().as_u16()), (Some("suffix"), 400));
        // A control token's id needs --allow-special-tokens.
        let im_start = tok.token_to_id("<|im_start|>").unwrap();
        assert_eq!(engine_prompt(&tok, &Given::Ids(vec![im_start]), None, false).unwrap_err().param(), Some("prompt"));
        assert!(engine_prompt(&tok, &Given::Ids(vec![im_start]), None, true).is_ok());
    }
}
