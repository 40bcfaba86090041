//! The function tools a request offers, and how the model must use them: `tool_choice` and
//! `parallel_tool_calls`. A call the client requires (`required`, or a named function) is
//! enforced by constrained decoding: the model can only write the calls' JSON.

use rosetta_engine::grammar::GrammarSpec;
use serde_json::{json, Value};

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of its arguments (an object schema).
    pub parameters: Value,
    pub strict: bool,
}

/// What the model may or must do with the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No calls; the tools are not shown to the model.
    None,
    /// The model decides; its calls are read out of its text.
    Auto,
    /// At least one call, of any tool.
    Required,
    /// Exactly this function.
    Named(String),
}

/// A request's tools and choice, checked against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct Toolset {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Whether the model may call several tools in one turn.
    pub parallel: bool,
}

/// A tools setting that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    /// The request field at fault (`tool_choice`, `tools[2].function.name`, ...).
    pub param: String,
    pub message: String,
}

impl Toolset {
    /// Checks the choice against the tools: a named function must be among them, and a call
    /// cannot be required of no tools.
    pub fn new(tools: Vec<Tool>, choice: ToolChoice, parallel: bool) -> Result<Self, ToolError> {
        let error = |message: String| ToolError {
            param: "tool_choice".into(),
            message,
        };
        let mut names = std::collections::HashSet::new();
        for (i, t) in tools.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                return Err(ToolError {
                    param: format!("tools[{i}].function.name"),
                    message: format!(
                        "Two tools are named `{}`; tool names must be unique.",
                        t.name
                    ),
                });
            }
        }
        match &choice {
            ToolChoice::Named(name) if !names.contains(name.as_str()) => {
                return Err(error(format!(
                    "Invalid 'tool_choice': the function `{name}` is not among the request's tools."
                )))
            }
            ToolChoice::Required | ToolChoice::Named(_) if tools.is_empty() => {
                return Err(error(
                    "Invalid 'tool_choice': a tool call cannot be required without 'tools'.".into(),
                ))
            }
            _ => {}
        }
        Ok(Self {
            tools,
            choice,
            parallel,
        })
    }

    /// The tools as chat templates read them (OpenAI's chat form); none when the model may
    /// not call them.
    pub fn for_template(&self) -> Option<Vec<Value>> {
        if self.choice == ToolChoice::None || self.tools.is_empty() {
            return None;
        }
        Some(
            self.tools
                .iter()
                .map(|t| {
                    let mut function = serde_json::Map::new();
                    function.insert("name".into(), json!(t.name));
                    if let Some(d) = &t.description {
                        function.insert("description".into(), json!(d));
                    }
                    function.insert("parameters".into(), t.parameters.clone());
                    json!({"type": "function", "function": function})
                })
                .collect(),
        )
    }

    /// The grammar that makes the model write the calls the client requires: a named
    /// function's arguments, or a list of `{name, arguments}` (one, unless parallel calls
    /// are allowed). `None` when the model chooses.
    pub fn forced_grammar(&self) -> Option<GrammarSpec> {
        match &self.choice {
            ToolChoice::Named(name) => self
                .tools
                .iter()
                .find(|t| &t.name == name)
                .map(|t| GrammarSpec::JsonSchema(t.parameters.clone())),
            ToolChoice::Required => {
                let calls: Vec<Value> = self
                    .tools
                    .iter()
                    .map(|t| {
                        json!({
                            "type": "object",
                            "properties": {
                                "name": {"const": t.name},
                                "arguments": t.parameters,
                            },
                            "required": ["name", "arguments"],
                            "additionalProperties": false,
                        })
                    })
                    .collect();
                let mut list = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
                if !self.parallel {
                    list["maxItems"] = json!(1);
                }
                Some(GrammarSpec::JsonSchema(list))
            }
            ToolChoice::None | ToolChoice::Auto => None,
        }
    }

    /// Whether the client requires a call (`required`, or a named function): the grammar of
    /// [`Toolset::forced_grammar`] then writes it.
    pub fn forces_call(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }

    /// Whether the model's calls are read out of free text (and so need its tool format).
    pub fn parsed_from_text(&self) -> bool {
        self.choice == ToolChoice::Auto && !self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool {
            name: name.into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
            strict: false,
        }
    }

    #[test]
    fn a_named_choice_must_name_a_tool() {
        let e = Toolset::new(vec![tool("a")], ToolChoice::Named("b".into()), true).unwrap_err();
        assert_eq!(e.param, "tool_choice");
        assert!(Toolset::new(vec![], ToolChoice::Required, true).is_err());
        let e = Toolset::new(vec![tool("a"), tool("a")], ToolChoice::Auto, true).unwrap_err();
        assert_eq!(e.param, "tools[1].function.name");
    }

    #[test]
    fn required_calls_are_a_list_of_one_unless_parallel() {
        let set = Toolset::new(vec![tool("a"), tool("b")], ToolChoice::Required, false).unwrap();
        let Some(GrammarSpec::JsonSchema(s)) = set.forced_grammar() else {
            panic!("a schema")
        };
        assert_eq!(s["maxItems"], 1);
        assert_eq!(s["items"]["anyOf"][1]["properties"]["name"]["const"], "b");
        let none = Toolset::new(vec![tool("a")], ToolChoice::None, true).unwrap();
        assert_eq!(none.for_template(), None, "tools are hidden under `none`");
    }
}
