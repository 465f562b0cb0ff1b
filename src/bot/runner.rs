//! One bot's life: join, turn room events into script hooks, carry out what
//! the script queued, fire its timers, leave.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::media::{self, BotMedia, MediaEvent, Outgoing};
use serde_json::json;

use super::script::{self, BotAction, BotScript, Source, Speaking, View};
use super::{BotConfig, BotError, Ended};
use crate::audio::Tone;
use crate::client::{ClientError, Participant, ParticipantOptions};
use crate::model::LeaveReason;
use crate::protocol::ServerMessage;
use crate::script::pool::Pool;
use crate::script::{ScriptError, ToLua};

/// Runs a bot until it leaves, is removed, loses its connection, or
/// `shutdown` completes (then it leaves politely).
pub async fn run(config: BotConfig, shutdown: impl Future<Output = ()>) -> Result<Ended, BotError> {
    let pool = match &config.pool {
        Some(pool) => pool.clone(),
        None => Pool::standalone(1).map_err(BotError::Threads)?,
    };
    let limit = config.limits.time + pool.config().grace;
    let label = config.script.display().to_string();
    let view = Arc::new(Mutex::new(View::default()));
    let script = {
        let (path, limits, options, view) = (
            config.script.clone(),
            config.limits.clone(),
            config.options.clone(),
            view.clone(),
        );
        pool.run(limit, move || {
            BotScript::load(&path, &limits, &options, view)
        })
        .await
        .map_err(|overrun| ScriptError::overran(&label, "load", overrun, limit))
        .and_then(|script| script)
        .map_err(BotError::Script)?
    };
    let mut options = ParticipantOptions::new(&config.url, &config.token, &config.room);
    options.also = config.also.clone();
    options.role = config.role;
    options.mode = config.mode;
    options.create = config.create;
    options.bind = config.bind;
    options.nodes_seen = Some(config.nodes_seen.clone());
    let participant = Participant::join(options).await.map_err(BotError::Join)?;
    let me = participant.hello().user.as_str().to_owned();
    let span = tracing::info_span!("bot", room = %config.room, user = %me);
    async move {
        tracing::info!(script = %config.script.display(), "bot joined room `{}` as `{me}`", config.room);
        let (media_tx, media_rx) = mpsc::channel(64);
        let session = participant.media_handle().expect("bots always start media");
        let media = BotMedia::new(session, &me, &config.record_dir, media_tx);
        {
            let joined = participant.joined();
            let mut v = view.lock().expect("bot view");
            v.user = me.clone();
            v.name = participant.hello().name.clone();
            v.room = joined.room.as_str().to_owned();
            v.role = Some(joined.role);
            v.members = joined.members.clone();
        }
        let mut bot = Runner {
            config,
            participant,
            script: Arc::new(Mutex::new(script)),
            pool,
            limit,
            label,
            stuck: false,
            view: view.clone(),
            media,
            media_rx,
            timers: BTreeMap::new(),
            speaking: Speaking::default(),
            ended: None,
        };
        bot.run(shutdown).await
    }
    .instrument(span)
    .await
}

struct Runner {
    config: BotConfig,
    participant: Participant,
    /// Shared with the script thread running a call on it; only ever used
    /// by one call at a time, and never again once a call got stuck.
    script: Arc<Mutex<BotScript>>,
    pool: Pool,
    /// How long one call may run before the watchdog gives up on it.
    limit: Duration,
    label: String,
    stuck: bool,
    /// What the script reads as `bot.me` and `bot.members()`.
    view: Arc<Mutex<View>>,
    media: BotMedia,
    media_rx: mpsc::Receiver<MediaEvent>,
    /// Due time and id; the interval of repeating timers is looked up on firing.
    timers: BTreeMap<(Instant, u64), Option<Duration>>,
    speaking: Speaking,
    ended: Option<Ended>,
}

impl Runner {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<Ended, BotError> {
        let room = self.participant.joined().room.as_str().to_owned();
        self.hook("on_joined", json!({ "room": room })).await;
        tokio::pin!(shutdown);
        while self.ended.is_none() {
            let next_timer = self.timers.keys().next().map(|(due, _)| *due);
            tokio::select! {
                event = self.participant.next_event() => match event {
                    Some(event) => self.on_event(event).await,
                    None => {
                        self.hook("on_left", json!({ "reason": "connection_lost" })).await;
                        self.ended = Some(Ended::ConnectionLost);
                    }
                },
                Some(event) = self.media_rx.recv() => match event {
                    MediaEvent::PlayEnded => self.hook("on_play_ended", json!({})).await,
                    MediaEvent::Failed { action, message } => self.failed(action, message).await,
                },
                () = sleep_until(next_timer) => self.fire_due().await,
                () = &mut shutdown => {
                    self.hook("on_left", json!({ "reason": "shutdown" })).await;
                    self.ended = Some(Ended::Left);
                },
            }
        }
        self.media.close();
        let ended = self.ended.take().unwrap_or(Ended::Left);
        // A bot that chose to go (or whose script can no longer act) says
        // so, rather than leaving its room to notice a dropped connection.
        if matches!(ended, Ended::Left | Ended::ScriptStuck) {
            let _ = self.participant.signal().leave().await;
        }
        if let Some(session) = self.participant.media() {
            session.close().await;
        }
        tracing::info!("bot {ended}");
        Ok(ended)
    }

    async fn on_event(&mut self, event: ServerMessage) {
        match event {
            ServerMessage::MemberJoined { member, .. } => {
                {
                    let mut v = self.view();
                    v.members.retain(|m| m.user != member.user);
                    v.members.push(member.clone());
                }
                self.hook("on_member_joined", member).await;
            }
            ServerMessage::MemberLeft { user, reason, .. } => {
                self.view().members.retain(|m| m.user != user);
                self.speaking.forget(user.as_str());
                self.hook("on_member_left", json!({ "user": user, "reason": reason }))
                    .await;
            }
            ServerMessage::RoleChanged {
                user,
                role,
                operate_by,
                ..
            } => {
                {
                    let mut v = self.view();
                    if let Some(m) = v.members.iter_mut().find(|m| m.user == user) {
                        m.role = role;
                    }
                    if user.as_str() == v.user {
                        v.role = Some(role);
                    }
                }
                let event = json!({ "user": user, "role": role, "operate_by": operate_by });
                self.hook("on_role_changed", event).await;
            }
            ServerMessage::MuteChanged {
                user,
                kind,
                muted,
                operate_by,
                ..
            } => {
                if let Some(m) = self.view().members.iter_mut().find(|m| m.user == user) {
                    match kind {
                        crate::model::MediaKind::Audio => m.audio_muted = muted,
                        crate::model::MediaKind::Video => m.video_muted = muted,
                    }
                }
                let event = json!({
                    "user": user, "kind": kind, "muted": muted, "operate_by": operate_by,
                });
                self.hook("on_mute_changed", event).await;
            }
            ServerMessage::Data { from, payload, .. } => {
                self.hook("on_data", json!({ "from": from, "payload": payload }))
                    .await;
            }
            ServerMessage::Volume { levels } => {
                for level in levels {
                    if let Some(speaking) =
                        self.speaking.update(level.user.as_str(), level.speaking)
                    {
                        let event = json!({
                            "user": level.user, "speaking": speaking, "level": level.level,
                        });
                        self.hook("on_speaking", event).await;
                    }
                }
            }
            ServerMessage::Disconnected { reason, .. } => {
                self.hook("on_left", json!({ "reason": reason })).await;
                self.ended = Some(match reason {
                    LeaveReason::Kicked => Ended::Kicked,
                    _ => Ended::Removed(reason),
                });
            }
            _ => {}
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().expect("bot view")
    }

    /// Runs `call` on the script on a script thread. A call that got stuck
    /// ends the bot: its state is never touched again.
    async fn on_thread<T: Send + 'static>(
        &mut self,
        what: &str,
        call: impl FnOnce(&mut BotScript) -> Result<T, ScriptError> + Send + 'static,
    ) -> Result<T, ScriptError> {
        if self.stuck {
            return Err(ScriptError::overran(
                &self.label,
                what,
                crate::script::pool::Overrun::Stuck,
                self.limit,
            ));
        }
        let script = self.script.clone();
        let answer = self
            .pool
            .run(self.limit, move || {
                call(&mut script.lock().unwrap_or_else(|p| p.into_inner()))
            })
            .await;
        answer.unwrap_or_else(|overrun| {
            let error = ScriptError::overran(&self.label, what, overrun, self.limit);
            if error.kind == crate::script::ErrorKind::Stuck {
                tracing::error!("bot script stopped answering: {error}");
                self.stuck = true;
                self.ended = Some(Ended::ScriptStuck);
            }
            Err(error)
        })
    }

    /// Calls a hook, then carries out what it queued.
    async fn hook(&mut self, name: &'static str, event: impl ToLua + Send + 'static) {
        self.refresh_view();
        let result = self.on_thread(name, move |s| s.call(name, &event)).await;
        self.after_call(result).await;
    }

    async fn after_call(&mut self, result: Result<(), ScriptError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "bot script error");
        }
        let actions = self.take_queued();
        for action in actions {
            if self.ended.is_some() {
                break;
            }
            let name = action.name();
            if let Err(message) = self.perform(action).await {
                // Errors raised while handling an error are only logged, so a
                // script cannot loop on its own failures.
                tracing::warn!(action = name, %message, "bot action failed");
                self.refresh_view();
                let event = json!({ "action": name, "message": message });
                let result = self
                    .on_thread("on_error", move |s| s.call("on_error", &event))
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "bot script error");
                }
                for action in self.take_queued() {
                    if let Err(message) = self.perform(action).await {
                        tracing::warn!(%message, "bot action failed in on_error");
                    }
                }
            }
        }
    }

    /// Applies the timers the script set or cancelled; returns its actions.
    fn take_queued(&mut self) -> Vec<BotAction> {
        if self.stuck {
            return Vec::new();
        }
        let (actions, timers, cancelled) = self.script.lock().expect("bot script").take();
        for id in cancelled {
            self.timers.retain(|(_, t), _| *t != id);
        }
        for t in timers {
            self.timers.insert((t.due, t.id), t.every);
        }
        actions
    }

    async fn failed(&mut self, action: &'static str, message: String) {
        tracing::warn!(action, %message, "bot media failed");
        self.hook("on_error", json!({ "action": action, "message": message }))
            .await;
    }

    fn refresh_view(&self) {
        let mut v = self.view();
        v.playing = self.media.playing();
        v.recording = self.media.recording();
    }

    async fn perform(&mut self, action: BotAction) -> Result<(), String> {
        let p = &self.participant;
        let refused = |e: ClientError| e.to_string();
        match action {
            BotAction::SendData { payload, to } => {
                p.send_data(payload, to.as_deref()).await.map_err(refused)
            }
            BotAction::Mute { user, kind, muted } => {
                p.mute(kind, muted, user.as_deref()).await.map_err(refused)
            }
            BotAction::Kick { user } => p.kick(&user).await.map_err(refused),
            BotAction::SetRole { role, user } => {
                p.set_role(role, user.as_deref()).await.map_err(refused)
            }
            BotAction::Play { source, looped } => {
                let outgoing = match source {
                    Source::File(name) => {
                        let path = script::confined(&self.config.media_dir, &name)?;
                        let frames = media::load_file(&path)?;
                        Outgoing::File { frames, looped }
                    }
                    Source::Tone {
                        frequency,
                        amplitude,
                    } => Outgoing::Tone(Tone::new(frequency, amplitude)),
                };
                self.media.send(outgoing);
                Ok(())
            }
            BotAction::Echo { delay, user } => {
                self.media.echo(delay, user);
                Ok(())
            }
            BotAction::Stop => {
                self.media.stop();
                Ok(())
            }
            BotAction::Record { target, file } => {
                let path = self.media.record(&target, &file)?;
                tracing::info!(%target, path = %path.display(), "recording");
                Ok(())
            }
            BotAction::StopRecording { target } => {
                self.media.stop_recording(target.as_deref());
                Ok(())
            }
            BotAction::Leave => {
                self.ended = Some(Ended::Left);
                Ok(())
            }
        }
    }

    async fn fire_due(&mut self) {
        let now = Instant::now();
        while let Some((&(due, id), &every)) = self.timers.iter().next() {
            if due > now || self.ended.is_some() {
                break;
            }
            self.timers.remove(&(due, id));
            self.refresh_view();
            let result = self.on_thread("timer", move |s| s.fire_timer(id)).await;
            let alive = matches!(result, Ok(true));
            match every {
                Some(interval) if alive => {
                    // A late timer is not run twice to catch up.
                    self.timers
                        .insert(((due + interval).max(now), id), Some(interval));
                }
                _ if !self.stuck => self.script.lock().expect("bot script").drop_timer(id),
                _ => {}
            }
            self.after_call(result.map(drop)).await;
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
