//! Every way an HTTP request can fail, and the one place where a failure becomes a status code
//! and OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Messages are written here, from typed fields, so that no message can carry a request body:
//! serde's own errors quote their input and are never passed through.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use govbox_engine::{EngineError, PromptError};

use crate::admission::AdmissionRefusal;
use crate::quota::QuotaRefusal;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The body is not JSON, or not JSON of the expected shape. Only the position is kept.
    #[error("the request body is not {what} (at line {line}, column {column})")]
    MalformedJson {
        /// "valid JSON" or "the JSON this endpoint expects".
        what: &'static str,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
    },
    /// A required field is absent.
    #[error("the required field '{param}' is missing")]
    MissingField {
        /// The field, as a path (`messages[0].role`).
        param: String,
    },
    /// A field holds a value of the wrong JSON type or shape. Neither the value nor anything
    /// quoted from it is kept: only what was expected and what kind of value came.
    #[error("'{param}' must be {expected}{}", got.map(|g| format!(" (got {g})")).unwrap_or_default())]
    WrongType {
        /// The field, as a path (`messages[0].content`).
        param: String,
        /// What it should hold ("a number", "a string or an array of strings").
        expected: String,
        /// The JSON kind that came ("a string"), when known.
        got: Option<&'static str>,
    },
    /// A field has a value that this endpoint refuses.
    #[error("{message}")]
    InvalidParam {
        /// The field, as a path (`messages[0].role`).
        param: std::borrow::Cow<'static, str>,
        /// Why, in words that do not repeat the value.
        message: String,
    },
    /// The body is larger than `limits.max_body_bytes`.
    #[error("the request body is larger than the {limit} bytes this server accepts")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body did not arrive within `limits.body_timeout_secs`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The body could not be read to its end (the client closed the connection, or bad chunking).
    #[error("the request body could not be read to its end")]
    BodyIncomplete,
    /// No client certificate and no bearer token.
    #[error("no credentials: present a client certificate of this box's CA or an 'Authorization: Bearer' token")]
    MissingCredentials,
    /// A bearer token that no active client holds, or tokens are not accepted here.
    #[error("invalid bearer token, or the client is revoked")]
    InvalidToken,
    /// A certificate of the box's CA that is not (or no longer) any active client's.
    #[error("the client certificate is revoked, renewed or expired")]
    CertificateNotAuthorised,
    /// The model exists but this client may not use it.
    #[error("client '{client}' may not use model '{model}'")]
    ModelNotAllowed {
        /// The client.
        client: String,
        /// The model.
        model: String,
    },
    /// The client lacks the scope this endpoint needs (`/metrics` needs `metrics`).
    #[error("client '{client}' does not hold the '{scope}' scope this endpoint needs")]
    ScopeNotGranted {
        /// The client.
        client: String,
        /// The scope.
        scope: &'static str,
    },
    /// No model of that name is served.
    #[error("model '{model}' does not exist")]
    ModelNotFound {
        /// The requested name (a configured-name syntax was checked before it is echoed).
        model: String,
    },
    /// The model cannot do what this endpoint asks (chat on an embedding model, ...).
    #[error("model '{model}' is {is}; {endpoint} needs {needs}")]
    WrongModelKind {
        /// The model.
        model: String,
        /// What the model is.
        is: &'static str,
        /// The endpoint.
        endpoint: &'static str,
        /// What the endpoint needs.
        needs: &'static str,
    },
    /// A rate or budget limit of the client refused the request.
    #[error(transparent)]
    Quota(#[from] QuotaRefusal),
    /// Every slot is busy and the queue is full.
    #[error("the server is busy: {queued} requests are already waiting; retry shortly")]
    QueueFull {
        /// Requests waiting.
        queued: usize,
    },
    /// The models are still loading.
    #[error("the models are still loading")]
    NotReady,
    /// SIGTERM arrived; running answers finish, new ones are refused.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The audit log could not make the request's entry durable, so the request is not served.
    #[error("the audit log is unavailable, so the request cannot be served; retry shortly")]
    AuditUnavailable,
    /// The request's deadline passed.
    #[error("the answer did not finish within the {secs} s request deadline")]
    DeadlineExceeded {
        /// The deadline.
        secs: u64,
    },
    /// The prompt cannot be generated from (empty, too long for the model's context, an unknown
    /// token id); `param` is the field that held it.
    #[error("{source} (model '{model}')")]
    InvalidPrompt {
        /// `messages` or `prompt`.
        param: &'static str,
        /// The model.
        model: String,
        /// What is wrong with it.
        source: PromptError,
    },
    /// The engine refused or failed the request; [`engine_status`] says what that means in HTTP.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// No route.
    #[error("no such endpoint")]
    RouteNotFound,
    /// A route with another method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The content-safety library refused the question; the message is the category's refusal.
    #[error("{refusal}")]
    ContentFiltered {
        /// The field that held the refused text (`messages` or `prompt`).
        param: &'static str,
        /// The library's refusal text for the category.
        refusal: String,
    },
    /// The content-safety library this client's requests need is not available.
    #[error(transparent)]
    PolicyUnavailable(#[from] crate::policy::PolicyUnavailable),
    /// A bug or an unexpected failure inside the daemon.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MalformedJson { .. }
            | MissingField { .. }
            | WrongType { .. }
            | InvalidParam { .. }
            | WrongModelKind { .. }
            | BodyIncomplete
            | InvalidPrompt { .. }
            | ContentFiltered { .. } => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            MissingCredentials | InvalidToken | CertificateNotAuthorised => StatusCode::UNAUTHORIZED,
            ModelNotAllowed { .. } | ScopeNotGranted { .. } => StatusCode::FORBIDDEN,
            ModelNotFound { .. } | RouteNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            QueueFull { .. } | NotReady | ShuttingDown | AuditUnavailable | PolicyUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            Engine(e) => engine_status(e),
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type`.
    pub fn error_type(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::TOO_MANY_REQUESTS => match self {
                ApiError::Quota(q) if q.is_budget() => "tokens",
                _ => "requests",
            },
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// A stable short code: OpenAI's `code`, a log field and an audit field.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            MalformedJson { .. } => "invalid_json",
            MissingField { .. } => "missing_required_parameter",
            WrongType { .. } => "invalid_type",
            InvalidParam { .. } | InvalidPrompt { .. } => "invalid_value",
            BodyTooLarge { .. } => "body_too_large",
            BodyTimeout => "body_timeout",
            BodyIncomplete => "body_incomplete",
            MissingCredentials => "missing_credentials",
            InvalidToken => "invalid_api_key",
            CertificateNotAuthorised => "invalid_client_certificate",
            ModelNotAllowed { .. } => "model_not_allowed",
            ScopeNotGranted { .. } => "scope_not_granted",
            ModelNotFound { .. } => "model_not_found",
            WrongModelKind { .. } => "wrong_model_kind",
            Quota(q) => q.code(),
            QueueFull { .. } => "server_overloaded",
            NotReady => "not_ready",
            ShuttingDown => "shutting_down",
            AuditUnavailable => "audit_unavailable",
            DeadlineExceeded { .. } => "deadline_exceeded",
            Engine(e) => e.code(),
            RouteNotFound => "unknown_url",
            MethodNotAllowed => "method_not_allowed",
            ContentFiltered { .. } => "content_filter",
            PolicyUnavailable(_) => "policy_unavailable",
            Internal(_) => "internal_error",
        }
    }

    /// OpenAI's `param`: the request field at fault, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidParam { param, .. } => Some(param.as_ref()),
            ApiError::InvalidPrompt { param, .. } => Some(param),
            ApiError::ContentFiltered { param, .. } => Some(param),
            ApiError::MissingField { param } | ApiError::WrongType { param, .. } => Some(param),
            ApiError::ModelNotFound { .. } | ApiError::ModelNotAllowed { .. } | ApiError::WrongModelKind { .. } => {
                Some("model")
            }
            _ => None,
        }
    }

    /// Seconds for a `Retry-After` header, where waiting helps.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Quota(q) => Some(q.retry_after().max(1)),
            ApiError::QueueFull { .. } | ApiError::NotReady | ApiError::AuditUnavailable => Some(1),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    /// A shorthand for [`ApiError::InvalidParam`].
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidParam { param: param.into(), message: message.into() }
    }

    /// [`ApiError::invalid`] for a field found at a path (`messages[3].role`).
    pub fn invalid_at(param: String, message: impl Into<String>) -> Self {
        ApiError::InvalidParam { param: param.into(), message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"govbox\""));
        }
        // Tell the log line (written when the response ends) why the request failed.
        resp.extensions_mut().insert(ErrorCode(self.code()));
        resp
    }
}

impl From<AdmissionRefusal> for ApiError {
    fn from(r: AdmissionRefusal) -> Self {
        match r {
            AdmissionRefusal::QueueFull { queued } => ApiError::QueueFull { queued },
            AdmissionRefusal::Closed => ApiError::ShuttingDown,
            AdmissionRefusal::DeadlineExceeded { secs } => ApiError::DeadlineExceeded { secs },
            AdmissionRefusal::Lost => ApiError::Internal("admission queue".into()),
        }
    }
}

/// The HTTP status of an engine error, by its variant: what the caller can fix is 400, what
/// the server cannot do now is 503, a deadline is 504, and a broken model or backend is 500.
pub fn engine_status(e: &EngineError) -> StatusCode {
    use EngineError::*;
    match e {
        InvalidPrompt(_) | Request(_) | Template(_) | Tokenizer(_) | Input(_) | Constraint(_) => {
            StatusCode::BAD_REQUEST
        }
        KvCacheFull { .. } | SchedulerStopped => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
        Io { .. }
        | Format { .. }
        | Tensor { .. }
        | MissingTensor { .. }
        | UnknownArchitecture(_)
        | Config { .. }
        | Driver(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // A variant added to the engine later: a server failure until it is mapped here.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The failure's code, carried to the request log line.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Maps a serde_json failure to [`ApiError::MalformedJson`], keeping only its position: serde's
/// message quotes the input (`invalid type: string "..."`), and the input may be a prompt.
/// Bodies are parsed to a `Value` first, so this sees syntax errors; shape errors go through
/// `fields::from_value`, which names the field.
pub fn from_json_error(e: &serde_json::Error) -> ApiError {
    let what = match e.classify() {
        serde_json::error::Category::Data => "the JSON this endpoint expects",
        _ => "valid JSON",
    };
    ApiError::MalformedJson { what, line: e.line(), column: e.column() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_shape_is_openais() {
        let e = ApiError::ModelNotFound { model: "x".into() };
        let b = e.body();
        assert_eq!(e.status(), 404);
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["param"], "model");
        assert_eq!(b["error"]["message"], "model 'x' does not exist");
        assert_eq!(b["error"].as_object().unwrap().len(), 4);
        let r = ApiError::from(QuotaRefusal::RateLimited { rpm: 2, retry_after: 30 }).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "30");
    }

    #[test]
    fn json_errors_never_quote_the_input() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            n: u32,
        }
        let secret = "SECRET-PROMPT-TEXT";
        // A wrong type and an unknown variant make serde quote the input; a syntax error does not.
        let bodies = [format!("{{\"n\": \"{secret}\"}}"), format!("{{\"n\": 1, \"{secret}\": 1"), secret.to_string()];
        let e = serde_json::from_str::<T>(&bodies[0]).unwrap_err();
        assert!(e.to_string().contains(secret), "serde quotes input, which is why its message is dropped: {e}");
        for body in &bodies {
            let e = serde_json::from_str::<T>(body).unwrap_err();
            let api = from_json_error(&e);
            assert!(!api.to_string().contains("SECRET"), "{api}");
            assert!(!api.body().to_string().contains("SECRET"));
            assert_eq!(api.status(), 400);
        }
    }

    #[test]
    fn every_status_has_a_type_and_code() {
        let all = [
            ApiError::BodyTooLarge { limit: 1 },
            ApiError::MissingCredentials,
            ApiError::InvalidToken,
            ApiError::CertificateNotAuthorised,
            ApiError::QueueFull { queued: 3 },
            ApiError::DeadlineExceeded { secs: 1 },
            ApiError::Engine(EngineError::KvCacheFull { need: 100, available: 64 }),
            ApiError::InvalidPrompt { param: "prompt", model: "m".into(), source: PromptError::Empty },
        ];
        let want = [413, 401, 401, 401, 503, 504, 503, 400];
        for (e, s) in all.iter().zip(want) {
            assert_eq!(e.status(), s, "{e:?}");
            assert!(!e.code().is_empty());
        }
    }

    /// Each engine error variant has one status, chosen by its variant, never by its message
    /// (before, a `Request` whose text said "KV cache is full" was 503 and internal failures
    /// were 400), and its own stable code.
    #[test]
    fn each_engine_error_maps_to_one_status_by_variant() {
        use govbox_drivers::DriverError;
        use govbox_engine::embed::EmbedInputError;
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let cases: Vec<(EngineError, u16, &str)> = vec![
            (PromptError::Empty.into(), 400, "invalid_prompt"),
            (PromptError::TooLong { tokens: 9, context: 8 }.into(), 400, "invalid_prompt"),
            (PromptError::UnknownToken { id: 9, vocab: 8 }.into(), 400, "invalid_prompt"),
            (EngineError::Request("KV cache is full".into()), 400, "bad_request"),
            (EngineError::Template("x".into()), 400, "chat_template"),
            (EngineError::Tokenizer("x".into()), 400, "tokenizer"),
            (EngineError::Input(EmbedInputError::TooLong { index: 0, tokens: 9, limit: 8 }), 400, "invalid_input"),
            (
                EngineError::Constraint(govbox_engine::constraint::ConstraintError::TooLarge {
                    what: "schema",
                    len: 9,
                }),
                400,
                "grammar",
            ),
            (EngineError::KvCacheFull { need: 100, available: 64 }, 503, "kv_cache_full"),
            (EngineError::SchedulerStopped, 503, "scheduler_stopped"),
            (EngineError::DeadlineExceeded { prompt_tokens: 3, completion_tokens: 1 }, 504, "deadline_exceeded"),
            (EngineError::Io { path: "m".into(), source: io() }, 500, "io"),
            (EngineError::Format { file: "m".into(), detail: "x".into() }, 500, "bad_format"),
            (EngineError::Tensor { file: "m".into(), tensor: "t".into(), detail: "x".into() }, 500, "bad_tensor"),
            (EngineError::MissingTensor { file: "m".into(), tensor: "t".into() }, 500, "missing_tensor"),
            (EngineError::UnknownArchitecture("x".into()), 500, "unknown_architecture"),
            (EngineError::Config { file: "m".into(), detail: "x".into() }, 500, "bad_config"),
            (EngineError::Driver(DriverError::KvCache("full".into())), 500, "backend"),
        ];
        let mut codes = std::collections::HashSet::new();
        for (e, status, code) in cases {
            let api = ApiError::Engine(e);
            assert_eq!((api.status().as_u16(), api.code()), (status, code), "{api:?}");
            assert_eq!(api.body()["error"]["code"], code);
            codes.insert(code);
        }
        assert_eq!(codes.len(), 16, "each variant has a code of its own");
        // A prompt error with its field names the field.
        let e = ApiError::InvalidPrompt { param: "messages", model: "m".into(), source: PromptError::Empty };
        assert_eq!((e.status().as_u16(), e.param(), e.code()), (400, Some("messages"), "invalid_value"));
    }
}
