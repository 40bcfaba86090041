//! The OpenTelemetry GenAI metrics (semantic conventions), measured by the gateway per
//! request and rendered under their Prometheus names (dots to underscores, unit suffix).

use prometheus::{HistogramVec, Registry};

use super::buckets;
use super::families::histogram;

/// `gen_ai.provider.name`: no listed provider fits a self-hosted server; the convention allows
/// a custom value.
pub const PROVIDER: &str = "rosetta";

const LABELS: &[&str] = &[
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
];

pub struct GenAiFamilies {
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub time_per_output_token: HistogramVec,
    pub token_usage: HistogramVec,
}

impl GenAiFamilies {
    pub fn register(r: &Registry) -> Self {
        let mut with_error = LABELS.to_vec();
        with_error.push("error_type");
        let mut with_type = LABELS.to_vec();
        with_type.push("gen_ai_token_type");
        Self {
            request_duration: histogram(
                r,
                "gen_ai_server_request_duration_seconds",
                "Generative AI server request duration such as time-to-last byte or last output token.",
                &with_error,
                buckets::GENAI_REQUEST_DURATION.to_vec(),
            ),
            time_to_first_token: histogram(
                r,
                "gen_ai_server_time_to_first_token_seconds",
                "Time to generate first token for successful responses.",
                LABELS,
                buckets::GENAI_TIME_TO_FIRST_TOKEN.to_vec(),
            ),
            time_per_output_token: histogram(
                r,
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token generated after the first token for successful responses.",
                LABELS,
                buckets::GENAI_TIME_PER_OUTPUT_TOKEN.to_vec(),
            ),
            token_usage: histogram(
                r,
                "gen_ai_client_token_usage",
                "Number of input and output tokens used (per request, as the gateway answered it).",
                &with_type,
                buckets::GENAI_TOKEN_USAGE.to_vec(),
            ),
        }
    }
}
