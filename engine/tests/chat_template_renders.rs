//! Chat templates render as transformers renders them (jinja2 with `trim_blocks` and
//! `lstrip_blocks`, Python string methods, its `tojson`), and a template's `raise_exception`
//! refuses the conversation. The expected strings were produced by jinja2 3.1 configured as
//! transformers configures it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use govbox_engine::chat::{ChatMessage, ChatTemplate, MAX_TEMPLATE_LEN};

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

#[test]
fn generation_prompt_is_added_only_when_asked() {
    let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
    let m = msgs(&[("user", "Hi")]);
    assert_eq!(t.render(&m, true).unwrap(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(t.render(&m, false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
}

#[test]
fn raise_exception_refuses_the_conversation() {
    let src = "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}\
               {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
               {% endif %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(t.render(&msgs(&[("user", "a"), ("assistant", "b")]), false).unwrap(), "[user] a\n[assistant] b\n");
    let e = t.render(&msgs(&[("user", "a"), ("user", "b")]), false).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("Conversation roles must alternate"), "{text}");
    assert_eq!(e.code(), "chat_template");
}

#[test]
fn whitespace_control_and_python_methods_match_jinja2() {
    // Indented block tags (lstrip_blocks), newlines after block tags (trim_blocks), `.strip()`
    // and `| trim`, item and attribute access, bos/eos tokens, and the template's final newline
    // dropped.
    let src = "{{ bos_token }}
{%- for m in messages %}
    {% if m.role == 'system' %}
<<SYS>> {{ m.content | trim }} <</SYS>>
    {% elif m.role == 'user' %}
  [INST] {{ m['content'].strip() }} [/INST]
    {% else %}
{{ ' ' + m.content.strip() + ' ' + eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
ASSISTANT:
{% endif %}
";
    let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
    let m = msgs(&[("system", " Be brief. "), ("user", "  hi \n"), ("assistant", "hello\n"), ("user", "数据 🔏")]);
    assert_eq!(
        t.render(&m, true).unwrap(),
        "<s><<SYS>> Be brief. <</SYS>>\n  [INST] hi [/INST]\n hello </s>\n  [INST] 数据 🔏 [/INST]\nASSISTANT:\n"
    );
    assert_eq!(
        t.render(&m, false).unwrap(),
        "<s><<SYS>> Be brief. <</SYS>>\n  [INST] hi [/INST]\n hello </s>\n  [INST] 数据 🔏 [/INST]\n"
    );
}

#[test]
fn default_system_message_as_smollm2_writes_it() {
    let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(
        t.render(&msgs(&[("user", "Q")]), true).unwrap(),
        "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&msgs(&[("system", "S"), ("user", "Q")]), false).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
    );
}

#[test]
fn tojson_matches_transformers() {
    // transformers replaces jinja2's tojson (which escapes HTML) by json.dumps(ensure_ascii=False).
    let src = "{% set tools = [{'name': 'get<weather>', 'params': {'city': '北京', 'n': 1.5, 'ok': true, 'x': none}}] %}\
               {{ tools | tojson }}\n{{ tools | tojson(indent=2) }}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(
        t.render(&[], false).unwrap(),
        "[{\"name\": \"get<weather>\", \"params\": {\"city\": \"北京\", \"n\": 1.5, \"ok\": true, \"x\": null}}]\n[\n  {\n    \"name\": \"get<weather>\",\n    \"params\": {\n      \"city\": \"北京\",\n      \"n\": 1.5,\n      \"ok\": true,\n      \"x\": null\n    }\n  }\n]"
    );
}

#[test]
fn strftime_now_gives_the_date() {
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", "", "").unwrap();
    let out = t.render(&[], false).unwrap();
    let parts: Vec<&str> = out.split('-').collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert!(parts[0].parse::<u32>().unwrap() >= 2025, "{out}");
    assert!((1..=12).contains(&parts[1].parse::<u32>().unwrap()), "{out}");
    assert!((1..=31).contains(&parts[2].parse::<u32>().unwrap()), "{out}");
    let bad = ChatTemplate::new("{{ strftime_now('%Q') }}", "", "").unwrap();
    assert!(bad.render(&[], false).unwrap_err().to_string().contains("unsupported conversion %Q"));
}

#[test]
fn bad_templates_are_refused_with_a_reason() {
    let e = ChatTemplate::new("{% if %}", "", "").unwrap_err().to_string();
    assert!(e.contains("does not compile"), "{e}");
    let e = ChatTemplate::new(&" ".repeat(MAX_TEMPLATE_LEN + 1), "", "").unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
    let t = ChatTemplate::new("{{ messages[0].content.no_such_method() }}", "", "").unwrap();
    assert!(t.render(&msgs(&[("user", "x")]), false).is_err());
}

#[test]
fn a_runaway_template_is_stopped_by_its_fuel_limit() {
    let t = govbox_engine::chat::ChatTemplate::new(
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    let e = t.render(&[], true).unwrap_err().to_string();
    assert!(e.contains("fuel"), "{e}");
}
