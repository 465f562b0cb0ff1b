//! Ordering (protocol.md §8): everything a request caused reaches the
//! requester before the response, the room policy's reactions included.
//! Read off the raw socket, frame by frame, so no client-side queue can
//! reorder what the server sent.

mod common;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `request` and returns every frame up to and including its response.
async fn until_response(socket: &mut Socket, request: Value) -> Vec<Value> {
    let id = request["id"].clone();
    socket
        .send(Message::text(request.to_string()))
        .await
        .expect("send");
    let mut frames = Vec::new();
    loop {
        let frame = tokio::time::timeout(common::PATIENCE, socket.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("readable");
        let Message::Text(text) = frame else { continue };
        let value: Value = serde_json::from_str(&text).expect("JSON");
        let done = value["type"] == "response" && value["id"] == id;
        frames.push(value);
        if done {
            return frames;
        }
    }
}

#[tokio::test]
async fn the_policys_reactions_arrive_before_the_response() {
    let srv = TestServer::start().await;
    srv.script(
        "chatty",
        r#"return {
             on_joined = function(m) room.send(m.user, { hello = m.user }); room.set_metadata("last", m.user) end,
             on_mute_changed = function(e) room.send(e.user, { muted = e.muted }) end,
           }"#,
    )
    .await;
    srv.client("owner")
        .await
        .create_with_policy("r", "", Some("chatty"))
        .await
        .unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(srv.ws_url())
        .await
        .unwrap();
    until_response(
        &mut socket,
        json!({"id": 1, "type": "hello", "version": 1, "token": srv.user_token("alice")}),
    )
    .await;

    let frames = until_response(
        &mut socket,
        json!({"id": 2, "type": "join", "room": "r", "mode": "audio"}),
    )
    .await;
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["data", "metadata_changed", "response"],
        "{frames:#?}"
    );
    assert_eq!(frames[0]["payload"], json!({ "hello": "alice" }));
    // The response describes the room after the reactions.
    assert_eq!(frames[2]["data"]["metadata"], json!({ "last": "alice" }));

    let frames = until_response(
        &mut socket,
        json!({"id": 3, "type": "mute", "kind": "audio", "muted": true}),
    )
    .await;
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["mute_changed", "data", "response"], "{frames:#?}");
    assert_eq!(frames[1]["payload"], json!({ "muted": true }));
    srv.shutdown().await;
}
