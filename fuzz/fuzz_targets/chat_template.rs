//! Chat templates render attacker-controlled conversations: never a panic, and a render always
//! ends soon: minijinja's fuel (`TEMPLATE_FUEL`) bounds the instructions, `MAX_RENDER_BYTES` the
//! output, and templates with a `*` operator are refused (a sequence repeated by `*` prints
//! without using fuel; seed `multiplied_sequence` took 29 s before). The first byte picks the mode:
//! - even: the input is a conversation (messages separated by NUL; each message's first byte
//!   picks its role, the rest is its content, lossily UTF-8) rendered through the real ChatML
//!   template of `tests/fixtures/tiny-qwen2` and through a Llama-2 style template;
//! - odd: the input up to the first NUL is itself a template (as a hostile model file would
//!   carry), rendered over the conversation that follows.
#![no_main]

use std::sync::OnceLock;

use govbox_engine::chat::{ChatMessage, ChatTemplate};
use libfuzzer_sys::fuzz_target;

const QWEN_CONFIG: &str = include_str!("../../tests/fixtures/tiny-qwen2/tokenizer_config.json");
const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}\
{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}\
{% set system_message = false %}{% endif %}{% for message in loop_messages %}\
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
{% if loop.index0 == 0 and system_message != false %}\
{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}\
{% else %}{% set content = message['content'] %}{% endif %}\
{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\
{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

fn templates() -> &'static [ChatTemplate] {
    static T: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    T.get_or_init(|| {
        let cfg: serde_json::Value = serde_json::from_str(QWEN_CONFIG).expect("fixture tokenizer_config.json");
        let qwen = cfg["chat_template"].as_str().expect("fixture has a chat_template");
        vec![
            ChatTemplate::new(qwen, "", "<|im_end|>").expect("the qwen2 template compiles"),
            ChatTemplate::new(LLAMA2, "<s>", "</s>").expect("the llama-2 template compiles"),
        ]
    })
}

fn conversation(data: &[u8]) -> Vec<ChatMessage> {
    data.split(|&b| b == 0)
        .filter_map(|m| m.split_first())
        .map(|(r, content)| ChatMessage::new(ROLES[*r as usize % ROLES.len()], String::from_utf8_lossy(content)))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((flag, rest)) = data.split_first() else { return };
    if flag & 1 == 0 {
        let messages = conversation(rest);
        for t in templates() {
            let _ = t.render(&messages, flag & 2 == 2);
        }
    } else {
        let (source, convo) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[..0]),
        };
        let Ok(source) = std::str::from_utf8(source) else { return };
        if let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") {
            let _ = t.render(&conversation(convo), flag & 2 == 2);
        }
    }
});
