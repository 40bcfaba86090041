//! Random identifiers for answers and tool calls, in OpenAI's shapes.

use rand::Rng;

/// `n` random characters from `[0-9a-zA-Z]`.
pub fn random_alphanumeric(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let i = rng.random_range(0..62u8);
            (match i {
                0..=9 => b'0' + i,
                10..=35 => b'a' + i - 10,
                _ => b'A' + i - 36,
            }) as char
        })
        .collect()
}

/// A random id such as `chatcmpl-4f2a...`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_alphanumeric(24))
}

/// A Responses API id, as OpenAI writes them: `resp_…`, `msg_…`, `fc_…`, `rs_…`.
pub fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_alphanumeric(24))
}

/// A tool call's id, as OpenAI writes them: `call_` and 24 characters.
pub fn tool_call_id() -> String {
    format!("call_{}", random_alphanumeric(24))
}
