//! The demo models' chat templates, one per family, written the way their real models'
//! templates render tools, tool calls, tool results and thinking. A conversation without
//! tools renders exactly as the demo templates always did.

/// Qwen2.5's layout (ChatML; tools in the system turn; Hermes `<tool_call>` JSON; tool
/// results grouped in one user turn), with the demo's default system prompt.
pub const QWEN2: &str = concat!(
    include_str!("templates/chatml_tools.jinja"),
    include_str!("templates/chatml_messages.jinja"),
    "{%- if add_generation_prompt %}\n",
    "{{- '<|im_start|>assistant\\n' }}\n",
    "{%- endif %}\n"
);

/// Qwen3's: as Qwen2.5, earlier turns' thinking stripped, and `enable_thinking: false`
/// closes an empty `<think>` block in the generation prompt.
pub const QWEN3: &str = concat!(
    include_str!("templates/chatml_tools.jinja"),
    include_str!("templates/chatml_messages.jinja"),
    "{%- if add_generation_prompt %}\n",
    "{{- '<|im_start|>assistant\\n' }}\n",
    "{%- if enable_thinking is defined and enable_thinking is false %}\n",
    "{{- '<think>\\n\\n</think>\\n\\n' }}\n",
    "{%- endif %}\n",
    "{%- endif %}\n"
);

/// Llama 3.1's: custom tools in the first user turn, calls as `{"name", "parameters"}`
/// JSON, results in `ipython` turns.
pub const LLAMA3: &str = include_str!("templates/llama3.jinja");

/// BLOOM ships no chat template (BLOOMZ answers plain prompts): the demo's renders the
/// conversation as `role: text` lines and ends with `assistant:`.
pub const BLOOM: &str = "{%- for message in messages %}{{- message['role'] + ': ' + (message['content'] or '') + '\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- 'assistant:' }}{%- endif %}";

/// Cohere's (Aya, Command R) turn markers, without its tool and document sections.
pub const COHERE: &str = include_str!("templates/cohere.jinja");

/// Command R7B's (Cohere2): Cohere's turns, with each answer between `<|START_RESPONSE|>` and
/// `<|END_RESPONSE|>`; the generation prompt opens the response.
pub const COHERE2: &str = include_str!("templates/cohere2.jinja");

/// DeepSeek-V3's turns (without its tool sections): the system prompt after the BOS, then
/// `<｜User｜>` and `<｜Assistant｜>` turns, each answer closed by the end-of-sentence token.
pub const DEEPSEEK: &str = include_str!("templates/deepseek.jinja");

/// Mistral v0.3's: `[AVAILABLE_TOOLS]` before the last user turn, `[TOOL_CALLS]` with a JSON
/// list, `[TOOL_RESULTS]`.
pub const MISTRAL: &str = include_str!("templates/mistral.jinja");

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::text::{ChatMessage, ChatTemplate, MessageContent, RenderOptions};

    fn msg(role: &str, text: &str) -> ChatMessage {
        ChatMessage::text(role, text)
    }

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather",
            "description": "Weather in a city", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
        ]
    }

    /// A question, the assistant's call, the tool's answer.
    fn conversation() -> Vec<ChatMessage> {
        vec![
            msg("user", "Hali ya hewa Nairobi?"),
            ChatMessage {
                role: "assistant".into(),
                content: Some(MessageContent::Text(String::new())),
                tool_calls: vec![json!({"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Nairobi"}}})],
                ..ChatMessage::default()
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..msg("tool", "{\"temp\": 21}")
            },
        ]
    }

    fn render(source: &str, messages: &[ChatMessage], tools: Option<&[Value]>) -> String {
        let (bos, eos) = if source == LLAMA3 {
            ("<|begin_of_text|>", "<|eot_id|>")
        } else {
            ("<|endoftext|>", "<|im_end|>")
        };
        ChatTemplate::new(source, Some(bos.into()), Some(eos.into()))
            .unwrap()
            .render_with(
                messages,
                &RenderOptions {
                    add_generation_prompt: true,
                    tools,
                    kwargs: None,
                },
            )
            .unwrap()
    }

    #[test]
    fn without_tools_the_chatml_templates_render_as_before() {
        let before = "<|im_start|>system\nYou are Rosetta Demo, a helpful multilingual assistant.<|im_end|>\n<|im_start|>user\nJambo<|im_end|>\n<|im_start|>assistant\n";
        for t in [QWEN2, QWEN3] {
            assert_eq!(render(t, &[msg("user", "Jambo")], None), before);
        }
        let llama = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHola<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        assert_eq!(
            render(
                LLAMA3,
                &[msg("system", " Be brief."), msg("user", "Hola ")],
                None
            ),
            llama
        );
    }

    #[test]
    fn qwen_renders_tools_calls_and_results_as_hermes() {
        let out = render(QWEN2, &conversation(), Some(&tools()));
        assert_eq!(
            out,
            concat!(
                "<|im_start|>system\nYou are Rosetta Demo, a helpful multilingual assistant.\n\n# Tools\n\n",
                "You may call one or more functions to assist with the user query.\n\n",
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
                r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#,
                "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
                "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
                "<|im_start|>user\nHali ya hewa Nairobi?<|im_end|>\n",
                "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nairobi\"}}\n</tool_call><|im_end|>\n",
                "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n",
                "<|im_start|>assistant\n"
            )
        );
    }

    #[test]
    fn qwen3_can_be_told_not_to_think_and_drops_old_thinking() {
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("enable_thinking".into(), json!(false));
        let history = [
            msg("user", "a"),
            msg("assistant", "<think>\nhmm\n</think>\n\nb"),
            msg("user", "c"),
        ];
        let t = ChatTemplate::new(QWEN3, None, None).unwrap();
        let out = t
            .render_with(
                &history,
                &RenderOptions {
                    add_generation_prompt: true,
                    tools: None,
                    kwargs: Some(&kwargs),
                },
            )
            .unwrap();
        assert!(out.contains("<|im_start|>assistant\nb<|im_end|>"), "{out}");
        assert!(
            out.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
            "{out}"
        );
        assert!(!render(QWEN3, &history, None).contains("<think>"));
    }

    #[test]
    fn llama_renders_tools_in_the_first_user_turn_and_results_as_ipython() {
        let out = render(LLAMA3, &conversation(), Some(&tools()));
        assert!(out.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the following functions"), "{out}");
        assert!(
            out.contains("{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\""),
            "{out}"
        );
        assert!(out.contains("<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Nairobi\"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 21}<|eot_id|>"), "{out}");
    }

    #[test]
    fn mistral_renders_available_tools_calls_and_results() {
        let out = render(MISTRAL, &conversation(), Some(&tools()));
        assert!(
            out.starts_with("<|endoftext|>[AVAILABLE_TOOLS] [{\"type\": \"function\""),
            "{out}"
        );
        assert!(out.contains("[/AVAILABLE_TOOLS][INST] Hali ya hewa Nairobi?[/INST][TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nairobi\"}, \"id\": \"call_1\"}]<|im_end|>[TOOL_RESULTS] {\"content\": \"{\\\"temp\\\": 21}\", \"call_id\": \"call_1\"}[/TOOL_RESULTS]"), "{out}");
    }
}
