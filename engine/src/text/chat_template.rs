//! Chat templates from tokenizer_config.json, rendered with minijinja the way Hugging Face's
//! `apply_chat_template` renders them with Jinja2.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::EngineError;

/// A part of a multi-part message content.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text parts joined by newlines, the way templates that expect a string see them.
    pub fn joined(&self) -> String {
        match self {
            Self::Text(t) => t.clone(),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One message as a template sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChatMessage {
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant turn's calls, as Hugging Face templates read them:
    /// `{id, type, function: {name, arguments}}` with `arguments` an object where it parses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// A tool turn's answer to this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An earlier assistant turn's thinking, for templates that show or strip it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    /// A message of plain text.
    pub fn text(role: &str, text: &str) -> Self {
        Self {
            role: role.into(),
            content: Some(MessageContent::Text(text.into())),
            ..Self::default()
        }
    }
}

/// What a rendering takes beside the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions<'a> {
    pub add_generation_prompt: bool,
    /// Function tools in OpenAI's chat form (`{type: function, function: {...}}`).
    pub tools: Option<&'a [serde_json::Value]>,
    /// `chat_template_kwargs`: extra variables (`enable_thinking`, ...), as vLLM passes them.
    pub kwargs: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Whether the template reads content parts itself (`content[...]['type']`); otherwise
    /// multi-part content is flattened to a string, as vLLM does for string-only templates.
    accepts_parts: bool,
    source: String,
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        // Hugging Face compiles templates with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string and dict methods (.strip(), .startswith(), .items(), ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::load(format!("invalid chat template: {e}")))?;
        let accepts_parts =
            source.contains("['type']") || source.contains(".type") || source.contains("is string");
        Ok(Self {
            env,
            bos_token,
            eos_token,
            accepts_parts,
            source: source.to_string(),
        })
    }

    /// The template's Jinja source (read to recognise its tool and thinking formats).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation. A template's `raise_exception` becomes an InvalidRequest.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        self.render_with(
            messages,
            &RenderOptions {
                add_generation_prompt,
                ..RenderOptions::default()
            },
        )
    }

    /// Renders the conversation with tools and template variables.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        options: &RenderOptions<'_>,
    ) -> Result<String, EngineError> {
        let messages: Vec<ChatMessage> = if self.accepts_parts {
            messages.to_vec()
        } else {
            messages
                .iter()
                .map(|m| ChatMessage {
                    content: m.content.as_ref().map(|c| MessageContent::Text(c.joined())),
                    ..m.clone()
                })
                .collect()
        };
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let base = minijinja::context! {
            messages => messages,
            add_generation_prompt => options.add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            tools => options.tools.map_or(Value::from(()), Value::from_serialize),
        };
        // The request's variables come first so that they cannot replace the messages.
        let ctx = match options.kwargs {
            Some(kwargs) => minijinja::context! { ..base, ..Value::from_serialize(kwargs) },
            None => base,
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            if e.kind() != ErrorKind::InvalidOperation {
                msg = format!("cannot render the chat template: {msg}");
            }
            EngineError::InvalidRequest(msg)
        })
    }
}

/// `tojson` as Hugging Face defines it for templates: Python's `json.dumps` with
/// `ensure_ascii=False` (`", "` and `": "` separators, or `indent`), not minijinja's compact
/// HTML-escaped form, so that tools render as the model saw them in training.
fn tojson(value: &Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match v {
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_string(k, out);
                out.push_str(": ");
                write_python_json(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::String(s) => write_python_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(fmt)` as Llama 3.1+ templates call it; supports the common date codes.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str) -> ChatMessage {
        ChatMessage::text(role, text)
    }

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")], true)
            .unwrap();
        assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn llama3_style_template_uses_bos_strip_and_raise_exception() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
        let t = ChatTemplate::new(
            src,
            Some("<|begin_of_text|>".into()),
            Some("<|eot_id|>".into()),
        )
        .unwrap();
        let out = t.render(&[msg("user", "  Hola  ")], true).unwrap();
        assert_eq!(out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHola<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        let err = t.render(&[msg("tool", "x")], true).unwrap_err();
        assert_eq!(
            err,
            EngineError::InvalidRequest("tool messages are not supported".into())
        );
    }

    #[test]
    fn multi_part_content_is_joined_for_string_templates() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let parts = MessageContent::Parts(vec![
            ContentPart {
                kind: "text".into(),
                text: "one".into(),
            },
            ContentPart {
                kind: "text".into(),
                text: "two".into(),
            },
        ]);
        let m = ChatMessage {
            role: "user".into(),
            content: Some(parts),
            ..ChatMessage::default()
        };
        assert_eq!(
            t.render(&[m], false).unwrap(),
            "<|im_start|>user\none\ntwo<|im_end|>\n"
        );
    }

    #[test]
    fn python_string_methods_work() {
        let t =
            ChatTemplate::new("{{ messages[0]['content'].strip().upper() }}", None, None).unwrap();
        assert_eq!(t.render(&[msg("user", " hi ")], false).unwrap(), "HI");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_792), (2026, 12, 5));
    }
}
