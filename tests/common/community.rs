//! Community set-up through the REST API, as an operator (the admin token)
//! or as a member (a user token, whose `sub` is the member).

use serde_json::{Value, json};

use super::TestServer;

/// Every permission key, in bit order.
pub const KEYS: [&str; 14] = [
    "RTCChannelConnect",
    "RTCChannelDisconnectOther",
    "RTCChannelOpenMicrophone",
    "RTCChannelOpenCamera",
    "RTCChannelOpenCloseOtherMicrophone",
    "RTCChannelOpenCloseOtherCamera",
    "RTCChannelOpenCloseEveryoneMicrophone",
    "RTCChannelOpenCloseEveryoneCamera",
    "RTCChannelOpenShareScreen",
    "RTCChannelCloseOtherShareScreen",
    "manageServer",
    "manageChannel",
    "manageRole",
    "manageBlackWhiteList",
];

/// `{key: "allow"}` for each key.
pub fn allow(keys: &[&str]) -> Value {
    keys.iter()
        .map(|k| (k.to_string(), json!("allow")))
        .collect()
}

/// `{key: value}` for each key.
pub fn set(keys: &[&str], value: &str) -> Value {
    keys.iter().map(|k| (k.to_string(), json!(value))).collect()
}

impl TestServer {
    /// A request as the operator that must succeed; its body.
    pub async fn op(&self, method: &str, path: &str, body: Value) -> Value {
        let token = self.admin_token();
        let path = format!("/api/community{path}");
        let (status, body) = match method {
            "GET" => self.get(&path, Some(&token)).await,
            "POST" => self.post(&path, Some(&token), body).await,
            "PATCH" => self.patch(&path, Some(&token), body).await,
            "PUT" => self.put(&path, Some(&token)).await,
            "DELETE" => self.delete(&path, Some(&token)).await,
            other => panic!("no method {other}"),
        };
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        body
    }

    /// A request as `user`; status and body.
    pub async fn as_user(&self, user: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let token = self.user_token(user);
        let path = format!("/api/community{path}");
        match method {
            "GET" => self.get(&path, Some(&token)).await,
            "POST" => self.post(&path, Some(&token), body).await,
            "PATCH" => self.patch(&path, Some(&token), body).await,
            "PUT" => self.put(&path, Some(&token)).await,
            "DELETE" => self.delete(&path, Some(&token)).await,
            other => panic!("no method {other}"),
        }
    }

    /// A community server owned by `owner` with `members`; its id.
    pub async fn community(&self, owner: &str, members: &[&str]) -> u64 {
        let created = self
            .op("POST", "/servers", json!({"name": "guild", "owner": owner}))
            .await;
        let id = created["id"].as_u64().expect("server id");
        for member in members {
            self.op(
                "POST",
                &format!("/servers/{id}/members"),
                json!({"user": member}),
            )
            .await;
        }
        id
    }

    /// A public media channel; its id.
    pub async fn media_channel(&self, server: u64, name: &str) -> u64 {
        let created = self
            .op(
                "POST",
                &format!("/servers/{server}/channels"),
                json!({"name": name, "kind": "media"}),
            )
            .await;
        created["id"].as_u64().expect("channel id")
    }

    /// A custom role; its id.
    pub async fn role(&self, server: u64, name: &str, priority: i64, permissions: Value) -> u64 {
        let created = self
            .op(
                "POST",
                &format!("/servers/{server}/roles"),
                json!({"name": name, "priority": priority, "permissions": permissions}),
            )
            .await;
        created["id"].as_u64().expect("role id")
    }

    pub async fn give(&self, server: u64, user: &str, role: u64) {
        self.op(
            "PUT",
            &format!("/servers/{server}/members/{user}/roles/{role}"),
            Value::Null,
        )
        .await;
    }

    /// Changes the everyone role (id 0) of a server.
    pub async fn everyone(&self, server: u64, changes: Value) {
        self.op(
            "PATCH",
            &format!("/servers/{server}/roles/0"),
            json!({"permissions": changes}),
        )
        .await;
    }

    /// Changes a member's override in a channel.
    pub async fn override_member(&self, server: u64, channel: u64, user: &str, changes: Value) {
        self.op(
            "PATCH",
            &format!("/servers/{server}/channels/{channel}/members/{user}"),
            changes,
        )
        .await;
    }
}
