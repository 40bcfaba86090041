//! Server-sent events as OpenAI streams them: `data: {json}` events and a final `data: [DONE]`.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Serialize;

use super::error::ApiError;
use crate::drain::Drain;

/// A streaming response, with SSE keep-alive comments while nothing is ready. If the server
/// shuts down before it ends, it ends after the grace period with an error event and `[DONE]`.
pub fn response(
    drain: &Drain,
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let closing = error_closing(&shutting_down())
        .into_iter()
        .map(Ok)
        .collect();
    let events = drain.guard_stream(events, closing);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What a request gets while the server shuts down.
pub fn shutting_down() -> ApiError {
    ApiError::unavailable(
        "The server is shutting down; retry, and another replica will answer.",
        1,
    )
    .with_code("server_shutting_down")
}

/// The end of a stream: the usage chunk when the client asked for it, then `[DONE]`.
pub fn closing<T: Serialize>(usage_chunk: Option<T>) -> Vec<Event> {
    usage_chunk
        .map(|c| json_event(&c))
        .into_iter()
        .chain([done_event()])
        .collect()
}

/// A failure mid-stream: OpenAI's error object as an event, then `[DONE]`.
pub fn error_closing(e: &ApiError) -> Vec<Event> {
    vec![json_event(&e.to_json()), done_event()]
}

pub fn json_event<T: Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(text) => Event::default().data(text),
        Err(e) => Event::default().data(format!(
            "{{\"error\":{{\"message\":\"cannot encode a chunk: {e}\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}"
        )),
    }
}

pub fn done_event() -> Event {
    Event::default().data("[DONE]")
}

/// The `data` of every event a stream renders, as a client reads them (for render tests).
#[cfg(test)]
pub async fn rendered_data(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Vec<String> {
    let body = Sse::new(events).into_response().into_body();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .split("\n\n")
        .filter_map(|e| {
            let data: Vec<&str> = e.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
