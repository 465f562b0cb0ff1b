//! At most `max` mutes of other members per member per `window_secs`: the
//! plugin keeps, per room, when each member last muted someone.
//!
//! ```toml
//! [policy.plugins.ratelimit.config]
//! max = 3
//! window_secs = 60
//! ```

use std::collections::{HashMap, VecDeque};

use conclave_plugin::{config_entries, export_plugin, host, Action, Plugin, Request, Verdict};

#[derive(Default)]
struct RateLimit {
    max: usize,
    window_ms: i64,
    recent: HashMap<String, VecDeque<i64>>,
}

impl Plugin for RateLimit {
    fn configure(&mut self, config: &str) -> Result<(), &'static str> {
        self.max = 5;
        self.window_ms = 60_000;
        for (key, value) in config_entries(config) {
            match key {
                "max" => self.max = value.parse().map_err(|_| "ratelimit: max is a number")?,
                "window_secs" => {
                    let secs: i64 = value.parse().map_err(|_| "ratelimit: window_secs is a number")?;
                    self.window_ms = secs * 1000;
                }
                _ => return Err("ratelimit: unknown config key (use max, window_secs)"),
            }
        }
        Ok(())
    }

    fn check(&mut self, req: &Request<'_>) -> Verdict<'_> {
        if !matches!(req.action, Action::MuteOther | Action::MuteEveryone) {
            return Verdict::Abstain;
        }
        let now = host::now_ms();
        let times = self.recent.entry(req.user.to_string()).or_default();
        while times.front().map_or(false, |t| now - *t >= self.window_ms) {
            times.pop_front();
        }
        if times.len() >= self.max {
            return Verdict::deny(429, "too many mutes of others; wait a minute");
        }
        times.push_back(now);
        Verdict::Abstain
    }
}

export_plugin!(RateLimit);
