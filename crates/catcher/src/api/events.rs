//! `GET /api/events`: the websocket that pushes Mailpit's live events
//! (`new`, `stats`, `update`, `delete`, `prune`, `truncate`) as JSON text
//! frames `{"Type": ..., "Data": ...}`.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;

/// Upgrades the connection and streams events until the client leaves.
pub async fn websocket(State(s): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let rx = s.store.subscribe();
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| stream(socket, rx))
}

async fn stream(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<crate::storage::Event>,
) {
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let text = match serde_json::to_string(&ev) {
                        Ok(t) => t,
                        Err(_) => continue,
                    };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // A slow browser missed some events: it catches up from the
                // next `stats`/`new`, as with Mailpit's dropped frames.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                // Pings are answered by axum; other client frames are ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}
