//! The examples in docs/protocol.md are the wire format: every request,
//! response and event shown there must parse as the server's types and
//! serialize back to exactly the JSON shown. The Rust client shares the
//! server's serde types, so its tests alone would never notice the docs and
//! the types drifting apart; these do.

use std::collections::HashMap;

use conclave::protocol::{
    ChannelMembersOk, ConnectOk, CreateOk, Frame, HelloOk, JoinOk, ServerMessage, parse_frame,
    parse_request,
};
use conclave::room::RoomInfo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Every one-line JSON object in a ```json block of the doc, with its line.
fn examples(doc: &str) -> Vec<(usize, Value)> {
    let mut out = Vec::new();
    let mut in_json = false;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_json = !in_json && info.trim() == "json";
            continue;
        }
        if in_json && trimmed.starts_with('{') {
            // Elided examples (`{ ... }`) are prose, not wire format.
            if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
                out.push((i + 1, value));
            }
        }
    }
    out
}

/// `value` read as `T` and written back must be `value` again.
fn round_trips<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if back == *value {
        Ok(())
    } else {
        Err(format!("serializes as {back}"))
    }
}

/// The type of a response's `data`, by the request it answers.
fn data_round_trips(request: &str, data: &Value) -> Option<Result<(), String>> {
    Some(match request {
        "hello" => round_trips::<HelloOk>(data),
        "create" => round_trips::<CreateOk>(data),
        "join" => round_trips::<JoinOk>(data),
        "connect" => round_trips::<ConnectOk>(data),
        "channel_members" => round_trips::<ChannelMembersOk>(data),
        _ => return None,
    })
}

#[test]
fn every_example_in_the_protocol_reference_is_what_the_types_say() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md");
    let mut checked = 0;
    let mut failures = Vec::new();
    // The last request seen with each id: the request a response answers.
    let mut requests: HashMap<u64, String> = HashMap::new();
    for (line, value) in examples(&doc) {
        let kind = value["type"].as_str().map(str::to_owned);
        let result = match (&kind, value.get("id")) {
            // A response: the envelope as ServerMessage, the data by request.
            (Some(kind), _) if kind == "response" => {
                let mut result = round_trips::<ServerMessage>(&value);
                let request = value["id"].as_u64().and_then(|id| requests.get(&id));
                if let (Ok(()), Some(request), Some(data)) = (&result, request, value.get("data"))
                    && !data.is_null()
                    && let Some(data_result) = data_round_trips(request, data)
                {
                    result = data_result.map_err(|e| format!("data of `{request}`: {e}"));
                    checked += 1;
                }
                result
            }
            // A request: parses, and its envelope serializes back as shown.
            (Some(kind), Some(id)) => {
                requests.insert(id.as_u64().unwrap_or(u64::MAX), kind.clone());
                let text = value.to_string();
                parse_request(&text)
                    .map_err(|m| m.message)
                    .and_then(|envelope| {
                        let back = serde_json::to_value(&envelope).map_err(|e| e.to_string())?;
                        if back == value {
                            Ok(())
                        } else {
                            Err(format!("serializes as {back}"))
                        }
                    })
            }
            // The heartbeat: the one client message with no id.
            (Some(kind), None) if kind == "ping" => match parse_frame(&value.to_string()) {
                Ok(Frame::Heartbeat) => Ok(()),
                other => Err(format!("is no heartbeat: {other:?}")),
            },
            // An event.
            (Some(_), None) => round_trips::<ServerMessage>(&value),
            // The admin API's one-room answer.
            (None, _) if value.get("member_list").is_some() => round_trips::<RoomInfo>(&value),
            // Other bodies (claims, lists) are checked by the API tests.
            (None, _) => continue,
        };
        checked += 1;
        if let Err(why) = result {
            failures.push(format!("docs/protocol.md:{line}: {value}\n  {why}"));
        }
    }
    assert!(checked >= 40, "only {checked} examples were checked");
    assert!(
        failures.is_empty(),
        "{} example(s) differ from the types:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
