//! Only listed users may join rooms whose name matches a pattern.
//!
//! ```toml
//! [policy.plugins.allowlist.config]
//! rooms = "vip-*"          # which rooms are guarded (default: all)
//! users = ["alice", "bob"] # who may join them
//! ```

use conclave_plugin::{config_entries, export_plugin, glob_match, Action, Plugin, Request, Verdict};

#[derive(Default)]
struct AllowList {
    rooms: String,
    users: Vec<String>,
}

impl Plugin for AllowList {
    fn configure(&mut self, config: &str) -> Result<(), &'static str> {
        self.rooms = "*".to_string();
        for (key, value) in config_entries(config) {
            match key {
                "rooms" => self.rooms = value.to_string(),
                "users" => self.users = value.split(',').map(|u| u.trim().to_string()).collect(),
                _ => return Err("allowlist: unknown config key (use rooms, users)"),
            }
        }
        Ok(())
    }

    fn check(&mut self, req: &Request) -> Verdict {
        if req.action != Action::Join || !glob_match(&self.rooms, req.room) {
            return Verdict::Abstain;
        }
        if self.users.iter().any(|u| u == req.user) {
            Verdict::Allow
        } else {
            Verdict::deny(403, "this room is open to listed users only")
        }
    }
}

export_plugin!(AllowList);
