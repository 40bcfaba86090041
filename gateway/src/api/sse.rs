//! Server-sent events as OpenAI streams them: `data: {json}` events and a final `data: [DONE]`.

use axum::response::sse::Event;
use serde::Serialize;

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
