//! Which tool-call and thinking formats a model speaks: from the config, else recognised in
//! its chat template.

use rosetta_config::{ReasoningParser, ToolParser};

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

/// How a model writes its thinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// Thinking only when the output opens `<think>`.
    Qwen3,
    /// The prompt opened `<think>`: the output thinks until `</think>`.
    DeepseekR1,
}

/// The configured tool format, or the one the template renders.
pub fn tool_format(configured: ToolParser, template: Option<&str>) -> Option<ToolFormat> {
    match configured {
        ToolParser::Hermes => Some(ToolFormat::Hermes),
        ToolParser::Llama3Json => Some(ToolFormat::Llama3Json),
        ToolParser::Mistral => Some(ToolFormat::Mistral),
        ToolParser::None => None,
        ToolParser::Auto => {
            let t = template?;
            if t.contains("<tool_call>") {
                Some(ToolFormat::Hermes)
            } else if t.contains("[TOOL_CALLS]") {
                Some(ToolFormat::Mistral)
            } else if t.contains("\"parameters\"") && t.contains("<|start_header_id|>") {
                Some(ToolFormat::Llama3Json)
            } else {
                None
            }
        }
    }
}

/// The configured thinking format, or the one the template renders.
pub fn reasoning_format(
    configured: ReasoningParser,
    template: Option<&str>,
) -> Option<ReasoningFormat> {
    match configured {
        ReasoningParser::Qwen3 => Some(ReasoningFormat::Qwen3),
        ReasoningParser::DeepseekR1 => Some(ReasoningFormat::DeepseekR1),
        ReasoningParser::None => None,
        ReasoningParser::Auto => {
            let t = template?;
            if !t.contains("<think>") {
                None
            } else if t.contains("<｜Assistant｜>") {
                // DeepSeek-R1's template (and its distills') opens the block in the prompt.
                Some(ReasoningFormat::DeepseekR1)
            } else {
                Some(ReasoningFormat::Qwen3)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rosetta_engine::demo::templates as t;

    #[test]
    fn recognises_the_demo_families() {
        let auto = |src| tool_format(ToolParser::Auto, Some(src));
        assert_eq!(auto(t::QWEN2), Some(ToolFormat::Hermes));
        assert_eq!(auto(t::QWEN3), Some(ToolFormat::Hermes));
        assert_eq!(auto(t::LLAMA3), Some(ToolFormat::Llama3Json));
        assert_eq!(auto(t::MISTRAL), Some(ToolFormat::Mistral));
        let think = |src| reasoning_format(ReasoningParser::Auto, Some(src));
        assert_eq!(think(t::QWEN3), Some(ReasoningFormat::Qwen3));
        assert_eq!(think(t::QWEN2), None);
        assert_eq!(
            tool_format(ToolParser::None, Some(t::QWEN2)),
            None,
            "config wins"
        );
    }
}
