//! Joining is possible only inside daily opening hours, read from the host clock.
//!
//! ```toml
//! [policy.plugins.timewindow.config]
//! open = "08:00"            # inclusive
//! close = "18:00"           # exclusive; may be earlier than open (overnight)
//! utc_offset_minutes = 480  # the hours are local to this offset
//! ```

use conclave_plugin::{config_entries, export_plugin, host, Action, Plugin, Request, Verdict};

const DAY_MINUTES: i64 = 24 * 60;

#[derive(Default)]
struct TimeWindow {
    open: i64,
    close: i64,
    offset: i64,
}

fn minutes(hhmm: &str) -> Result<i64, &'static str> {
    let mut parts = hhmm.splitn(2, ':');
    let hours: i64 = parts.next().and_then(|h| h.trim().parse().ok()).ok_or("timewindow: times are HH:MM")?;
    let mins: i64 = parts.next().and_then(|m| m.trim().parse().ok()).ok_or("timewindow: times are HH:MM")?;
    if !(0..24).contains(&hours) || !(0..60).contains(&mins) {
        return Err("timewindow: times are HH:MM within a day");
    }
    Ok(hours * 60 + mins)
}

impl TimeWindow {
    fn is_open(&self, now_ms: i64) -> bool {
        let local = (now_ms / 60_000 + self.offset).rem_euclid(DAY_MINUTES);
        if self.open <= self.close {
            self.open <= local && local < self.close
        } else {
            local >= self.open || local < self.close
        }
    }
}

impl Plugin for TimeWindow {
    fn configure(&mut self, config: &str) -> Result<(), &'static str> {
        self.open = 0;
        self.close = DAY_MINUTES;
        for (key, value) in config_entries(config) {
            match key {
                "open" => self.open = minutes(value)?,
                "close" => self.close = minutes(value)?,
                "utc_offset_minutes" => {
                    self.offset = value.parse().map_err(|_| "timewindow: utc_offset_minutes is a number")?
                }
                _ => return Err("timewindow: unknown config key (use open, close, utc_offset_minutes)"),
            }
        }
        Ok(())
    }

    fn check(&mut self, req: &Request<'_>) -> Verdict<'_> {
        if req.action != Action::Join || self.is_open(host::now_ms()) {
            return Verdict::Abstain;
        }
        Verdict::deny(403, "rooms are closed at this hour")
    }
}

export_plugin!(TimeWindow);
