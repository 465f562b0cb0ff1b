//! Only listed users may join rooms whose name matches a pattern.
//!
//! ```toml
//! [policy.plugins.allowlist.config]
//! rooms = "vip-*"          # which rooms are guarded (default: all)
//! users = ["alice", "bob"] # who may join them
//! attr = "vip"             # ... and anyone whose token has the attribute vip = true
//! ```

use conclave_plugin::{config_entries, export_plugin, glob_match, Action, Plugin, Request, Verdict};

#[derive(Default)]
struct AllowList {
    rooms: String,
    users: Vec<String>,
    /// A token attribute that admits its holder when it is `true`.
    attr: Option<String>,
}

impl Plugin for AllowList {
    fn configure(&mut self, config: &str) -> Result<(), &'static str> {
        self.rooms = "*".to_string();
        for (key, value) in config_entries(config) {
            match key {
                "rooms" => self.rooms = value.to_string(),
                "users" => self.users = value.split(',').map(|u| u.trim().to_string()).collect(),
                "attr" => self.attr = Some(value.to_string()),
                _ => return Err("allowlist: unknown config key (use rooms, users, attr)"),
            }
        }
        Ok(())
    }

    fn check(&mut self, req: &Request<'_>) -> Verdict<'_> {
        if req.action != Action::Join || !glob_match(&self.rooms, req.room) {
            return Verdict::Abstain;
        }
        let listed = self.users.iter().any(|u| u == req.user);
        let holds_attr = self.attr.as_deref().map_or(false, |a| req.attr(a) == Some("true"));
        if listed || holds_attr {
            Verdict::Allow
        } else {
            Verdict::deny(403, "this room is open to listed users only")
        }
    }
}

export_plugin!(AllowList);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(config: &str) -> AllowList {
        let mut p = AllowList::default();
        p.configure(config).expect("configures");
        p
    }

    #[test]
    fn listed_users_and_attribute_holders_join_guarded_rooms() {
        let mut p = plugin("rooms=vip-*\nusers=alice\nattr=vip\n");
        let join = |user| Request::new(Action::Join, "vip-1", user);
        assert_eq!(p.check(&join("alice")), Verdict::Allow);
        assert!(matches!(p.check(&join("bob")), Verdict::Deny(403, _)));
        let vip = Request { attrs: "vip=true\n", ..join("bob") };
        assert_eq!(p.check(&vip), Verdict::Allow);
        let elsewhere = Request::new(Action::Join, "lobby", "bob");
        assert_eq!(p.check(&elsewhere), Verdict::Abstain);
    }
}
