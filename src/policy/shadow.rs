//! Shadow policies: a candidate runs beside a room's live policy, sees
//! everything it sees, and decides nothing.
//!
//! Envoy's shadow rules are the model. Every decide hook the live policy
//! answers is asked of the shadow too, with the same request and the same
//! view of the room; only the live verdict is applied. The shadow's react
//! hooks run as the live one's do, and whatever they ask for (sends, kicks,
//! timers, metadata) is dropped. Verdicts that differ are disagreements:
//! counted (`conclave_policy_shadow_decisions_total{outcome}`), logged,
//! and kept (the newest [`KEPT`]) with the request, both verdicts and both
//! versions for the admin API.
//!
//! The shadow costs the live path one queue push: its calls run on a task
//! of their own, in order, on the script pool, with the shadow's own state,
//! budget and memory cap. A shadow that fails is counted and never
//! touches the room; one that gets stuck is dropped (its state may still
//! be running), and says so in its status. Its `store` is a private,
//! initially empty one: a shadow never writes the live policy's data.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use super::catalog::Catalog;
use super::lua::{Decision, HookError, LuaPolicy, RoomView};
use crate::script::ToLua;

/// Disagreements a room keeps.
pub const KEPT: usize = 100;

/// Calls queued for a shadow before new ones are dropped (and counted).
const QUEUE: usize = 1024;

/// A verdict in a form both sides can be compared (and written) in.
pub fn verdict(answer: &Result<Decision, HookError>) -> Json {
    match answer {
        Ok(Decision::Pass) => json!({ "verdict": "pass" }),
        Ok(Decision::Allow) => json!({ "verdict": "allow" }),
        Ok(Decision::Deny(f)) => {
            json!({ "verdict": "deny", "code": f.status.code(), "reason": f.message })
        }
        Ok(Decision::Join { role, muted }) => {
            json!({ "verdict": "join", "role": role, "muted": muted })
        }
        Ok(Decision::Payload(p)) => json!({ "verdict": "payload", "payload": p }),
        Ok(Decision::Handled) => json!({ "verdict": "handled" }),
        Err(e) => json!({ "verdict": "failed", "kind": e.kind.label(), "reason": e.message }),
    }
}

/// Whether two verdicts decide the same: the same kind and terms. The
/// reason's wording is not compared (a reworded refusal still refuses);
/// the code is.
pub fn agree(a: &Json, b: &Json) -> bool {
    let strip = |v: &Json| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("reason");
        }
        v
    };
    strip(a) == strip(b)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabel {
    /// `agree`, `disagree`, `failed` (the shadow's hook failed) or
    /// `dropped` (its queue was full).
    pub outcome: &'static str,
}

/// `conclave_policy_shadow_decisions_total`.
pub type ShadowCounts = Family<ShadowLabel, Counter>;

/// One decide hook on which the shadow and the live policy differed.
#[derive(Clone, Debug, Serialize)]
pub struct Disagreement {
    pub at: i64,
    pub hook: String,
    /// The request both were asked.
    pub request: Json,
    pub live: Json,
    pub shadow: Json,
    pub live_version: String,
    pub shadow_version: String,
}

/// What the admin API shows about a room's shadow.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShadowStatus {
    pub policy: String,
    /// `name@hash` of the shadow's version.
    pub version: String,
    /// Decide hooks compared so far.
    pub compared: u64,
    pub disagreements: u64,
    /// Shadow hooks that failed (errors, budget, memory).
    pub failures: u64,
    /// Calls dropped because the shadow fell behind.
    pub dropped: u64,
    /// Set when the shadow stopped (stuck, or its state could not load).
    pub stopped: Option<String>,
    /// The newest disagreements, oldest first.
    pub recent: Vec<Disagreement>,
}

enum Job {
    Decide {
        at: i64,
        hook: &'static str,
        view: Arc<RoomView>,
        request: Json,
        live: Json,
        live_version: String,
    },
    React {
        hook: &'static str,
        view: Arc<RoomView>,
        arg: Json,
    },
}

/// A room's shadow: the queue to its task, and what it has found.
pub struct Shadow {
    tx: mpsc::Sender<Job>,
    status: Arc<Mutex<ShadowStatus>>,
    counts: ShadowCounts,
}

impl Shadow {
    /// Starts a shadow running `lua` (a fresh state of the candidate) for
    /// the room, on `catalog`'s script pool.
    pub fn start(
        catalog: Arc<Catalog>,
        policy: String,
        lua: LuaPolicy,
        counts: ShadowCounts,
    ) -> Shadow {
        let status = Arc::new(Mutex::new(ShadowStatus {
            policy,
            version: lua.script().label(),
            ..ShadowStatus::default()
        }));
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(catalog, lua, rx, status.clone(), counts.clone()));
        Shadow { tx, status, counts }
    }

    pub fn status(&self) -> ShadowStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn push(&self, job: Job) {
        // A stopped shadow's queue is closed: nothing to count.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(job) {
            self.counts
                .get_or_create(&ShadowLabel { outcome: "dropped" })
                .inc();
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.dropped += 1;
        }
    }

    /// The live policy answered `hook` on `request` with `live`.
    pub fn decide(
        &self,
        at: i64,
        hook: &'static str,
        view: &Arc<RoomView>,
        request: Json,
        live: Json,
        live_version: String,
    ) {
        self.push(Job::Decide {
            at,
            hook,
            view: view.clone(),
            request,
            live,
            live_version,
        });
    }

    /// The live policy reacted to `hook` with `arg`.
    pub fn react(&self, hook: &'static str, view: &Arc<RoomView>, arg: Json) {
        self.push(Job::React {
            hook,
            view: view.clone(),
            arg,
        });
    }
}

async fn run(
    catalog: Arc<Catalog>,
    lua: LuaPolicy,
    mut rx: mpsc::Receiver<Job>,
    status: Arc<Mutex<ShadowStatus>>,
    counts: ShadowCounts,
) {
    let state = Arc::new(Mutex::new(lua));
    let count = |outcome: &'static str| counts.get_or_create(&ShadowLabel { outcome }).inc();
    while let Some(job) = rx.recv().await {
        let shared = state.clone();
        let limit = catalog.call_limit();
        match job {
            Job::Decide {
                at,
                hook,
                view,
                request,
                live,
                live_version,
            } => {
                let answer = catalog
                    .pool()
                    .run_unhurried(limit, move || {
                        let mut lua = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let mut dropped = Vec::new();
                        let answer = lua.decide(hook, &view, &request, &mut dropped);
                        (verdict(&answer), lua.script().label(), request)
                    })
                    .await;
                let Ok((shadow, shadow_version, request)) = answer else {
                    stop(&status, hook);
                    return;
                };
                let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                s.compared += 1;
                if shadow["verdict"] == "failed" {
                    s.failures += 1;
                    count("failed");
                }
                if agree(&live, &shadow) {
                    count("agree");
                    continue;
                }
                count("disagree");
                s.disagreements += 1;
                tracing::info!(
                    hook,
                    live = %live,
                    shadow = %shadow,
                    %live_version,
                    %shadow_version,
                    "shadow policy disagrees"
                );
                if s.recent.len() == KEPT {
                    s.recent.remove(0);
                }
                s.recent.push(Disagreement {
                    at,
                    hook: hook.to_owned(),
                    request,
                    live,
                    shadow,
                    live_version,
                    shadow_version,
                });
            }
            Job::React { hook, view, arg } => {
                let answer = catalog
                    .pool()
                    .run_unhurried(limit, move || {
                        let mut lua = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let mut dropped = Vec::new();
                        let args: [&dyn ToLua; 1] = [&arg];
                        lua.react(hook, &view, &args, &mut dropped).is_ok()
                    })
                    .await;
                match answer {
                    Ok(true) => {}
                    Ok(false) => {
                        count("failed");
                        status.lock().unwrap_or_else(|p| p.into_inner()).failures += 1;
                    }
                    Err(_) => {
                        stop(&status, hook);
                        return;
                    }
                }
            }
        }
    }
}

fn stop(status: &Mutex<ShadowStatus>, hook: &str) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    tracing::warn!(policy = %s.policy, hook, "shadow policy stopped: a call did not return");
    s.stopped = Some(format!(
        "`{hook}` did not return within its time budget; the shadow was dropped"
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Failure, Status};

    #[test]
    fn verdicts_agree_on_kind_and_terms_not_on_wording() {
        let deny = |code, reason: &str| verdict(&Ok(Decision::Deny(Failure::new(code, reason))));
        assert!(agree(
            &deny(Status::Forbidden, "full"),
            &deny(Status::Forbidden, "the room is full")
        ));
        assert!(!agree(
            &deny(Status::Forbidden, "x"),
            &deny(Status::ChannelFull, "x")
        ));
        assert!(!agree(
            &verdict(&Ok(Decision::Pass)),
            &verdict(&Ok(Decision::Allow))
        ));
        let join = |role| verdict(&Ok(Decision::Join { role, muted: false }));
        assert!(!agree(
            &join(Some(crate::model::Role::Audience)),
            &join(None)
        ));
    }
}
