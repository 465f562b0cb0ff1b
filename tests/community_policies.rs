//! Lua hooks and wasm plugins see a member's community permissions and
//! roles, and refine the built-in decision with them.

mod common;

use common::community::allow;
use common::{TestServer, event_where};
use conclave::policy::catalog::PolicyRule;
use conclave::protocol::{MediaKind, ServerMessage};
use conclave::status::Status;

/// Only members holding one of the two highest-ranked roles (priority 20 or
/// better here) may share a screen, on top of RTCChannelOpenShareScreen.
const STAGE: &str = r#"
return {
  can_share_screen = function(req)
    if not req.on then return end
    local c = req.community
    local top = c.roles[1]
    if top == nil or top.priority > 20 then
      return false, "only the two highest-ranked roles share screens here"
    end
  end,
  can_join = function(req)
    room.send(nil, { joining = req.user, keys = req.community.permissions })
  end,
}
"#;

fn refusal(e: conclave::client::ClientError) -> (Status, String) {
    match e {
        conclave::client::ClientError::Refused(f) => (f.status, f.message),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_lua_policy_refines_screen_sharing_by_role_rank() {
    let srv = TestServer::start_with(|c| {
        c.policy.rules = vec![PolicyRule {
            rooms: "channel:*".into(),
            policy: "stage".into(),
        }];
    })
    .await;
    srv.script("stage", STAGE).await;
    let server = srv.community("olivia", &["ann", "ben", "cat"]).await;
    let channel = srv.media_channel(server, "stage").await;
    for (user, name, priority) in [("ann", "a", 10), ("ben", "b", 20), ("cat", "c", 30)] {
        let role = srv.role(server, name, priority, allow(&[])).await;
        srv.give(server, user, role).await;
    }

    let mut ann = srv.client("ann").await;
    ann.connect_channel(server, channel, None).await.unwrap();
    let ben = srv.client("ben").await;
    ben.connect_channel(server, channel, None).await.unwrap();
    // can_join saw Ben's keys: the everyone role's defaults.
    let keys = event_where(&mut ann, |e| match e {
        ServerMessage::Data { payload, .. } if payload["joining"] == "ben" => {
            Some(payload["keys"].clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(
        keys,
        serde_json::json!([
            "RTCChannelConnect",
            "RTCChannelOpenMicrophone",
            "RTCChannelOpenCamera",
            "RTCChannelOpenShareScreen"
        ])
    );

    // Cat holds RTCChannelOpenShareScreen, but the policy refuses her rank.
    let cat = srv.client("cat").await;
    cat.connect_channel(server, channel, None).await.unwrap();
    let (status, message) = refusal(cat.share_screen(true, None).await.unwrap_err());
    assert_eq!(status, Status::Forbidden);
    assert_eq!(
        message,
        "only the two highest-ranked roles share screens here"
    );
    ben.share_screen(true, None).await.unwrap();
    ann.share_screen(true, None).await.unwrap();
    srv.shutdown().await;
}

/// A plugin in WAT: refuses to let anyone unmute their microphone unless
/// the request's permission bits include manageRole (bit 12).
const MANAGERS_SPEAK: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "conclave_abi_version") (result i32) i32.const 1)
  (func (export "conclave_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "conclave_check") (param $ptr i32) (param $len i32) (result i32)
    local.get $ptr
    i32.load
    i32.const 3
    i32.eq
    if (result i32)
      local.get $ptr
      i64.load offset=16
      i64.const 4096
      i64.and
      i64.eqz
      if (result i32) i32.const 403 else i32.const 0 end
    else
      i32.const 0
    end))"#;

#[tokio::test]
async fn a_plugin_reads_the_permission_bits() {
    let srv = TestServer::start_with(|c| {
        std::fs::write(
            c.policy.plugins_dir.join("managers_speak.wat"),
            MANAGERS_SPEAK,
        )
        .expect("write plugin");
    })
    .await;
    let server = srv.community("olivia", &["ann", "ben"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let managers = srv
        .role(server, "managers", 10, allow(&["manageRole"]))
        .await;
    srv.give(server, "ann", managers).await;

    let mut ann = srv.client("ann").await;
    let ben = srv.client("ben").await;
    ann.connect_channel(server, channel, None).await.unwrap();
    ben.connect_channel(server, channel, None).await.unwrap();
    ann.mute(MediaKind::Audio, false, None).await.unwrap();
    // Ben holds RTCChannelOpenMicrophone; the plugin still says no.
    let (status, _) = refusal(ben.mute(MediaKind::Audio, false, None).await.unwrap_err());
    assert_eq!(status, Status::Forbidden);
    // Once his role set includes manageRole, the same request passes.
    srv.give(server, "ben", managers).await;
    ben.mute(MediaKind::Audio, false, None).await.unwrap();
    event_where(&mut ann, |e| match e {
        ServerMessage::MuteChanged { user, muted, .. } if user.as_str() == "ben" => {
            (!muted).then_some(())
        }
        _ => None,
    })
    .await;
    srv.shutdown().await;
}
