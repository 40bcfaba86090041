//! Reads tool calls out of the answer's text as it streams, one reader per format: the
//! model's own (Hermes, Llama 3.1 JSON, Mistral) when it chooses, or the JSON that
//! constrained decoding made it write when a call is required. Text that only looked like a
//! call stays content.

use serde_json::Value;

use super::formats::ToolFormat;
use super::partial_marker_len;
use super::piece::Piece;

/// Reads calls out of text given piece by piece.
pub trait CallReader: Send {
    fn push(&mut self, text: &str, out: &mut Vec<Piece>);
    fn finish(&mut self, out: &mut Vec<Piece>);
}

/// The reader for a model's own format.
pub fn reader(format: ToolFormat) -> Box<dyn CallReader> {
    match format {
        ToolFormat::Hermes => Box::new(Tagged::new("<tool_call>", "</tool_call>")),
        ToolFormat::Llama3Json => Box::new(LeadingJson::default()),
        ToolFormat::Mistral => Box::new(Tagged::new("[TOOL_CALLS]", "")),
    }
}

/// Numbers calls and gives them ids.
#[derive(Default)]
struct Calls {
    count: usize,
}

impl Calls {
    fn emit(&mut self, name: String, arguments: String, out: &mut Vec<Piece>) {
        out.push(Piece::Call {
            index: self.count,
            id: crate::ids::tool_call_id(),
            name,
            arguments,
        });
        self.count += 1;
    }
}

/// `{"name": …, "arguments" | "parameters": …}` as (name, arguments as a JSON string).
fn call_of(v: &Value) -> Option<(String, String)> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        // Some models write the arguments as a JSON string already.
        Some(Value::String(s)) => s.clone(),
        Some(args) => args.to_string(),
    };
    Some((name, arguments))
}

/// Every JSON value in `text`, separated by whitespace, `,` or `;`; `None` if anything else
/// is there.
fn json_values(text: &str) -> Option<Vec<Value>> {
    let mut values = Vec::new();
    let mut rest = text.trim_start_matches(|c: char| c.is_whitespace() || c == ';' || c == ',');
    while !rest.is_empty() {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = stream.next()?.ok()?;
        rest = rest[stream.byte_offset()..]
            .trim_start_matches(|c: char| c.is_whitespace() || c == ';' || c == ',');
        values.push(v);
    }
    Some(values)
}

/// Calls in a list or one after another: `[{…}, {…}]`, `{…}; {…}`.
fn calls_in(text: &str) -> Option<Vec<(String, String)>> {
    let values = json_values(text)?;
    let objects: Vec<&Value> = match values.as_slice() {
        [Value::Array(items)] => items.iter().collect(),
        _ => values.iter().collect(),
    };
    if objects.is_empty() {
        return None;
    }
    objects.into_iter().map(call_of).collect()
}

/// Content until an opening marker, then calls until the closing one (or the end of the
/// output when there is none): Hermes `<tool_call>…</tool_call>`, Mistral `[TOOL_CALLS] […]`.
struct Tagged {
    open: &'static str,
    close: &'static str,
    inside: bool,
    held: String,
    calls: Calls,
    /// Whitespace after a call, dropped unless more content follows.
    after_call: bool,
}

impl Tagged {
    fn new(open: &'static str, close: &'static str) -> Self {
        Self {
            open,
            close,
            inside: false,
            held: String::new(),
            calls: Calls::default(),
            after_call: false,
        }
    }

    fn content(&mut self, text: &str, out: &mut Vec<Piece>) {
        if self.after_call && text.trim().is_empty() {
            return;
        }
        self.after_call = false;
        if !text.is_empty() {
            out.push(Piece::Content(text.to_string()));
        }
    }

    /// The calls between the markers; as content when they do not parse.
    fn close_calls(&mut self, body: &str, closed: bool, out: &mut Vec<Piece>) {
        match calls_in(body) {
            Some(calls) => {
                for (name, arguments) in calls {
                    self.calls.emit(name, arguments, out);
                }
                self.after_call = true;
            }
            None => {
                let close = if closed { self.close } else { "" };
                let text = format!("{}{body}{close}", self.open);
                self.after_call = false;
                out.push(Piece::Content(text));
            }
        }
    }
}

impl CallReader for Tagged {
    fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        self.held.push_str(text);
        loop {
            if self.inside {
                if self.close.is_empty() {
                    return; // the calls run to the end of the output
                }
                let Some(end) = self.held.find(self.close) else {
                    return;
                };
                let body = self.held[..end].to_string();
                self.held.drain(..end + self.close.len());
                self.inside = false;
                self.close_calls(&body, true, out);
            } else {
                match self.held.find(self.open) {
                    Some(start) => {
                        let before = self.held[..start].to_string();
                        self.content(&before, out);
                        self.held.drain(..start + self.open.len());
                        self.inside = true;
                    }
                    None => {
                        let keep = partial_marker_len(&self.held, self.open);
                        let ready = self.held[..self.held.len() - keep].to_string();
                        // Whitespace after a call waits to see whether content follows.
                        if self.after_call && ready.trim().is_empty() {
                            return;
                        }
                        self.held.drain(..ready.len());
                        self.content(&ready, out);
                        return;
                    }
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Piece>) {
        let held = std::mem::take(&mut self.held);
        if self.inside {
            self.close_calls(&held, false, out);
        } else {
            self.content(&held, out);
        }
    }
}

/// Llama 3.1: an answer that opens with `{` (after an optional `<|python_tag|>`) is calls,
/// read when the output ends; any other answer is content as it streams.
#[derive(Default)]
struct LeadingJson {
    held: String,
    /// `Some(true)`: calls; `Some(false)`: content; `None`: not yet known.
    calls_mode: Option<bool>,
    calls: Calls,
}

const PYTHON_TAG: &str = "<|python_tag|>";

impl CallReader for LeadingJson {
    fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        self.held.push_str(text);
        if self.calls_mode.is_none() {
            let start = self.held.trim_start();
            let start = start.strip_prefix(PYTHON_TAG).unwrap_or(start).trim_start();
            if start.is_empty() || PYTHON_TAG.starts_with(start) {
                return;
            }
            self.calls_mode = Some(start.starts_with('{'));
        }
        if self.calls_mode == Some(false) && !self.held.is_empty() {
            out.push(Piece::Content(std::mem::take(&mut self.held)));
        }
    }

    fn finish(&mut self, out: &mut Vec<Piece>) {
        let held = std::mem::take(&mut self.held);
        let body = held.trim_start();
        let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
        match (self.calls_mode, calls_in(body)) {
            (Some(true), Some(calls)) => {
                for (name, arguments) in calls {
                    self.calls.emit(name, arguments, out);
                }
            }
            _ if !held.is_empty() => out.push(Piece::Content(held)),
            _ => {}
        }
    }
}

/// `tool_choice` naming a function: the whole output is its arguments, streamed as written.
pub struct NamedCall {
    name: String,
    started: bool,
}

impl NamedCall {
    pub fn new(name: String) -> Self {
        Self {
            name,
            started: false,
        }
    }

    fn start(&mut self, out: &mut Vec<Piece>) {
        if !self.started {
            self.started = true;
            out.push(Piece::Call {
                index: 0,
                id: crate::ids::tool_call_id(),
                name: self.name.clone(),
                arguments: String::new(),
            });
        }
    }
}

impl CallReader for NamedCall {
    fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        self.start(out);
        if !text.is_empty() {
            out.push(Piece::Arguments {
                index: 0,
                fragment: text.to_string(),
            });
        }
    }

    fn finish(&mut self, out: &mut Vec<Piece>) {
        self.start(out);
    }
}

/// `tool_choice: required`: the output is a JSON list of `{name, arguments}`; each call is
/// given as soon as its object closes.
#[derive(Default)]
pub struct RequiredCalls {
    depth: usize,
    in_string: bool,
    escaped: bool,
    object: String,
    calls: Calls,
}

impl CallReader for RequiredCalls {
    fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        for c in text.chars() {
            if self.depth >= 2 {
                self.object.push(c);
            }
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => {
                    self.depth += 1;
                    if self.depth == 2 {
                        self.object.push(c);
                    }
                }
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1 {
                        let object = std::mem::take(&mut self.object);
                        if let Some((name, arguments)) = serde_json::from_str(&object)
                            .ok()
                            .as_ref()
                            .and_then(call_of)
                        {
                            self.calls.emit(name, arguments, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// A list cut short (the length limit) leaves its unfinished call out.
    fn finish(&mut self, _out: &mut Vec<Piece>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (content, [(name, arguments)]) from `text` fed `step` bytes at a time.
    fn read(
        mut r: Box<dyn CallReader>,
        text: &str,
        step: usize,
    ) -> (String, Vec<(String, String)>) {
        let mut out = Vec::new();
        for piece in super::super::in_steps(text, step) {
            r.push(piece, &mut out);
        }
        r.finish(&mut out);
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for p in out {
            match p {
                Piece::Content(t) => content.push_str(&t),
                Piece::Call {
                    index,
                    name,
                    arguments,
                    ..
                } => {
                    assert_eq!(index, calls.len(), "calls are numbered in order");
                    calls.push((name, arguments));
                }
                Piece::Arguments { index, fragment } => calls[index].1.push_str(&fragment),
                Piece::Reasoning(_) => panic!("no thinking here"),
            }
        }
        (content, calls)
    }

    fn call(name: &str, args: &str) -> (String, String) {
        (name.to_string(), args.to_string())
    }

    #[test]
    fn hermes_calls_among_content() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lagos\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>\n";
        for step in [1, 3, 5, 1000] {
            let (content, calls) = read(reader(ToolFormat::Hermes), text, step);
            assert_eq!(content, "Let me check.\n");
            assert_eq!(
                calls,
                [
                    call("get_weather", r#"{"city":"Lagos"}"#),
                    call("time", "{}")
                ]
            );
        }
        // Not JSON: stays content, as written.
        let broken = "<tool_call>\nnot json\n</tool_call>";
        assert_eq!(
            read(reader(ToolFormat::Hermes), broken, 2),
            (broken.to_string(), vec![])
        );
        // No closing tag before the end of the output: still a call if it parses.
        let (_, calls) = read(
            reader(ToolFormat::Hermes),
            "<tool_call>{\"name\": \"a\"}",
            4,
        );
        assert_eq!(calls, [call("a", "{}")]);
        assert_eq!(
            read(reader(ToolFormat::Hermes), "a < b", 1),
            ("a < b".into(), vec![])
        );
    }

    #[test]
    fn llama3_json_calls_open_the_answer() {
        let text = "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"x\": 1}}; {\"name\": \"g\", \"parameters\": {}}";
        for step in [1, 4, 1000] {
            let (content, calls) = read(reader(ToolFormat::Llama3Json), text, step);
            assert_eq!(content, "");
            assert_eq!(calls, [call("f", r#"{"x":1}"#), call("g", "{}")]);
            let plain = "Habari {yako}";
            assert_eq!(
                read(reader(ToolFormat::Llama3Json), plain, step),
                (plain.into(), vec![])
            );
            let not_a_call = "{\"just\": \"json\"}";
            assert_eq!(
                read(reader(ToolFormat::Llama3Json), not_a_call, step),
                (not_a_call.into(), vec![])
            );
        }
    }

    #[test]
    fn mistral_calls_follow_the_marker() {
        let text = "Sure. [TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"q\": \"é\"}}, {\"name\": \"g\", \"arguments\": {}}]";
        for step in [1, 2, 1000] {
            let (content, calls) = read(reader(ToolFormat::Mistral), text, step);
            assert_eq!(content, "Sure. ");
            assert_eq!(calls, [call("f", r#"{"q":"é"}"#), call("g", "{}")]);
        }
    }

    #[test]
    fn forced_calls() {
        let named = read(Box::new(NamedCall::new("f".into())), "{\"x\": 1}", 2);
        assert_eq!(named, (String::new(), vec![call("f", "{\"x\": 1}")]));
        let list = r#"[{"name":"f","arguments":{"s":"}{\"]"}},{"name":"g","arguments":{}}]"#;
        for step in [1, 3, 1000] {
            let (_, calls) = read(Box::<RequiredCalls>::default(), list, step);
            assert_eq!(calls, [call("f", r#"{"s":"}{\"]"}"#), call("g", "{}")]);
        }
    }
}
