//! Histogram bucket layouts, as vLLM (`vllm/v1/metrics/buckets.py`) and the OpenTelemetry
//! GenAI semantic conventions define them, so existing dashboards read our histograms alike.

/// vLLM's request latency family: e2e, queue, inference, prefill, decode.
pub const REQUEST_LATENCY: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// vLLM's time to first token.
pub const TIME_TO_FIRST_TOKEN: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// vLLM's inter-token latency (and per-request time per output token).
pub const INTER_TOKEN_LATENCY: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

/// vLLM's tokens per engine step.
pub const ITERATION_TOKENS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// vLLM's `n` parameter.
pub const REQUEST_PARAMS_N: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];

/// vLLM's token-count family: 1, 2, 5, 10, 20, 50, … up to the model's context length.
pub fn one_two_five(max: usize) -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut scale = 1usize;
    loop {
        for m in [1, 2, 5] {
            let v = m * scale;
            if v > max.max(1) {
                return buckets;
            }
            buckets.push(v as f64);
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => return buckets,
        };
    }
}

/// GenAI semconv: `gen_ai.server.request.duration`.
pub const GENAI_REQUEST_DURATION: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// GenAI semconv: `gen_ai.server.time_to_first_token`.
pub const GENAI_TIME_TO_FIRST_TOKEN: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// GenAI semconv: `gen_ai.server.time_per_output_token`.
pub const GENAI_TIME_PER_OUTPUT_TOKEN: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// GenAI semconv: `gen_ai.client.token.usage`.
pub const GENAI_TOKEN_USAGE: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

#[cfg(test)]
mod tests {
    use super::one_two_five;

    #[test]
    fn token_buckets_follow_vllm() {
        assert_eq!(
            one_two_five(2048),
            [1., 2., 5., 10., 20., 50., 100., 200., 500., 1000., 2000.]
        );
        assert_eq!(one_two_five(8192).last(), Some(&5000.0));
        assert_eq!(one_two_five(100).last(), Some(&100.0));
    }
}
