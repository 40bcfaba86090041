//! Arbitrary request bodies for the endpoints' property tests: objects with the fields an
//! endpoint reads, each holding a plausible value or any JSON at all.

use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, nested a few levels.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for `field`: usually one of the shapes the API takes, sometimes anything.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let plausible: BoxedStrategy<Value> = match field {
        "messages" => prop::collection::vec(
            (
                prop_oneof![
                    Just("user"),
                    Just("system"),
                    Just("assistant"),
                    Just("tool"),
                    Just("x")
                ],
                prop_oneof![
                    "\\PC{0,20}".prop_map(Value::String),
                    prop::collection::vec(
                        "\\PC{0,8}".prop_map(|t| json!({"type": "text", "text": t})),
                        0..3
                    )
                    .prop_map(Value::Array),
                    any_json(),
                ],
            )
                .prop_map(|(role, content)| json!({"role": role, "content": content})),
            0..4,
        )
        .prop_map(Value::Array)
        .boxed(),
        "prompt" => prop_oneof![
            "\\PC{0,20}".prop_map(Value::String),
            prop::collection::vec(any::<u32>().prop_map(|n| json!(n)), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                prop::collection::vec(0u32..100, 0..4).prop_map(|v| json!(v)),
                0..4
            )
            .prop_map(Value::Array),
        ]
        .boxed(),
        "n"
        | "max_tokens"
        | "max_completion_tokens"
        | "top_k"
        | "min_tokens"
        | "seed"
        | "logprobs"
        | "top_logprobs"
        | "best_of" => any::<i64>().prop_map(|n| json!(n)).boxed(),
        "temperature" | "top_p" | "min_p" | "presence_penalty" | "frequency_penalty"
        | "repetition_penalty" => (-3.0f64..3.0).prop_map(|f| json!(f)).boxed(),
        "stop" => prop_oneof![
            "\\PC{0,6}".prop_map(Value::String),
            prop::collection::vec("\\PC{0,6}".prop_map(Value::String), 0..6).prop_map(Value::Array),
        ]
        .boxed(),
        "stop_token_ids" => prop::collection::vec(any::<u32>(), 0..6)
            .prop_map(|v| json!(v))
            .boxed(),
        "logit_bias" => prop::collection::btree_map("[0-9]{1,4}", -150.0f64..150.0, 0..5)
            .prop_map(|m| json!(m))
            .boxed(),
        "stream" | "echo" | "ignore_eos" | "skip_special_tokens" | "add_generation_prompt" => {
            any::<bool>().prop_map(Value::Bool).boxed()
        }
        _ => any_json().boxed(),
    };
    prop_oneof![4 => plausible, 1 => any_json()].boxed()
}

/// A request body with some of `fields` (always `model`).
pub fn body(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let entries: Vec<BoxedStrategy<Option<(&'static str, Value)>>> = fields
        .iter()
        .map(|&f| prop::option::of(field_value(f).prop_map(move |v| (f, v))).boxed())
        .collect();
    entries.prop_map(|chosen| {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!("m"));
        for (k, v) in chosen.into_iter().flatten() {
            body.insert(k.to_string(), v);
        }
        Value::Object(body)
    })
}
