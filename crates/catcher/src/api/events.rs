//! `GET /api/events`: the websocket that pushes Mailpit's live events
//! (`new`, `stats`, `update`, `delete`, `prune`, `truncate`) as JSON text
//! frames `{"Type": ..., "Data": ...}`.
//!
//! Which pages may open it is decided by the CORS check in front of every
//! `/api/` route (see `origin.rs`): the UI's own origin, `MP_API_CORS`
//! origins, and non-browser clients without an `Origin`. Here each
//! subscriber is bounded: at most [`ApiOptions::max_event_subscribers`]
//! at once (503 above), a ping every [`PING_INTERVAL`] so dead peers are
//! noticed, and a frame that cannot be written within [`SEND_TIMEOUT`]
//! drops the subscriber: a client that stops reading costs at most the
//! socket buffers and [`MAX_WRITE_BUFFER`], never a growing queue.
//!
//! [`ApiOptions::max_event_subscribers`]: super::ApiOptions

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;

/// How often an idle subscriber is pinged (Mailpit pings every 54 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Longest a frame may wait to be written before the subscriber is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a subscriber's writer may buffer beyond the socket before a send
/// fails (events are a few hundred bytes each).
pub const MAX_WRITE_BUFFER: usize = 256 * 1024;

/// Upgrades the connection and streams events until the client leaves.
pub async fn websocket(State(s): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let Ok(slot) = s.subscribers.clone().try_acquire_owned() else {
        tracing::warn!("websocket refused: too many event subscribers");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event subscribers\n",
        )
            .into_response();
    };
    let rx = s.store.subscribe();
    ws.max_message_size(64 * 1024)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| stream(socket, rx, slot))
}

/// Sends one frame, or fails when the client does not take it in time.
async fn send(socket: &mut WebSocket, msg: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            tracing::debug!("event subscriber too slow to read; dropped");
            Err(())
        }
    }
}

async fn stream(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<crate::storage::Event>,
    _slot: OwnedSemaphorePermit,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let text = match serde_json::to_string(&ev) {
                        Ok(t) => t,
                        Err(_) => continue,
                    };
                    if send(&mut socket, Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // A slow browser missed some events: it catches up from the
                // next `stats`/`new`, as with Mailpit's dropped frames.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            _ = ping.tick() => {
                if send(&mut socket, Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                // Pings are answered by axum; other client frames are ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The subscriber slots for [`ApiOptions::max_event_subscribers`](super::ApiOptions).
pub(crate) fn subscriber_slots(max: usize) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(max.max(1)))
}
