//! Access tokens: HS256 JWTs naming a user and what the user may do.
//!
//! The token is the whole of a user's authority: conclave keeps no user table.
//! A token is checked once, at `hello` (and per request on the admin API); the
//! resulting [`Identity`] travels with every request the connection makes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::model::Role;

/// The key `serve --dev` and `token --dev` use. Public by design: a dev server
/// binds to loopback only.
pub const DEV_SECRET: &str = "conclave-dev-secret-do-not-use-in-production";

/// Shortest secret accepted outside dev mode, in bytes (HS256 wants 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// What a token allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// May create rooms (whose names match `rooms`).
    #[serde(default)]
    pub create: bool,
    /// Room name patterns this token may create and join; `*` matches any
    /// run of characters. Empty means no room.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Roles the user may take for itself.
    #[serde(default = "all_roles")]
    pub roles: Vec<Role>,
    /// May use the admin API and act on other members (mute, set role, kick).
    #[serde(default)]
    pub admin: bool,
}

fn all_roles() -> Vec<Role> {
    vec![Role::Interactor, Role::Audience]
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            create: false,
            rooms: Vec::new(),
            roles: all_roles(),
            admin: false,
        }
    }
}

/// The token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub grants: Grants,
    /// Free-form attributes room policies can read (`member.attrs`).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attrs: serde_json::Map<String, serde_json::Value>,
    /// The token's id, by which it can be revoked (`POST /api/revocations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A verified user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub name: String,
    pub grants: Grants,
    /// The token's `attrs`, as a JSON object.
    pub attrs: serde_json::Value,
    /// The token's `jti`, if it has one.
    pub jti: Option<String>,
}

impl Identity {
    pub fn may_enter(&self, room: &str) -> bool {
        self.grants
            .rooms
            .iter()
            .any(|pattern| glob_match(pattern, room))
    }

    pub fn may_take_role(&self, role: Role) -> bool {
        self.grants.roles.contains(&role)
    }

    /// The role a join without one gets: interactor when allowed.
    pub fn default_role(&self) -> Option<Role> {
        [Role::Interactor, Role::Audience]
            .into_iter()
            .find(|r| self.may_take_role(*r))
    }
}

/// A token's `attrs` as permission plugins receive them: one `key=value`
/// line per top-level attribute. Strings go as they are, numbers and booleans
/// as their JSON text, arrays and objects as compact JSON; `null` and keys a
/// line cannot hold (empty, or with `=` or a line break) are left out, and a
/// line break inside a value becomes a space.
pub fn attr_lines(attrs: &serde_json::Value) -> String {
    let Some(attrs) = attrs.as_object() else {
        return String::new();
    };
    let mut out = String::new();
    for (key, value) in attrs {
        if key.is_empty() || key.contains(['=', '\n', '\r']) {
            continue;
        }
        let text = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(key);
        out.push('=');
        out.extend(
            text.chars()
                .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
        );
        out.push('\n');
    }
    out
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token given")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("the secret is {0} bytes; at least {MIN_SECRET_LEN} are required")]
    WeakSecret(usize),
    #[error("could not sign token: {0}")]
    Sign(String),
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

impl Auth {
    /// A verifier for production: refuses a secret shorter than [`MIN_SECRET_LEN`].
    pub fn new(secret: &str) -> Result<Self, AuthError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(AuthError::WeakSecret(secret.len()));
        }
        Ok(Self::with_secret(secret.as_bytes()))
    }

    /// The built-in dev key.
    pub fn dev() -> Self {
        Self::with_secret(DEV_SECRET.as_bytes())
    }

    fn with_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthError::Malformed("`sub` is empty".into()));
        }
        let name = if claims.name.is_empty() {
            claims.sub.clone()
        } else {
            claims.name
        };
        Ok(Identity {
            user: UserId(claims.sub),
            name,
            grants: claims.grants,
            attrs: serde_json::Value::Object(claims.attrs),
            jti: claims.jti.filter(|j| !j.is_empty()),
        })
    }
}

/// Claims for `user`, valid for `ttl` from now.
pub fn claims_for(user: &str, name: &str, grants: Grants, ttl: Duration) -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Claims {
        sub: user.to_owned(),
        name: name.to_owned(),
        exp: now + ttl.as_secs(),
        iat: now,
        grants,
        attrs: serde_json::Map::new(),
        jti: Some(new_jti()),
    }
}

/// A fresh token id: 128 random bits in hex.
pub fn new_jti() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Matches `text` against `pattern`, where `*` stands for any run of
/// characters (including none) and everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` always yields at least one item.
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No `*` at all: the whole text must equal the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_become_one_line_each() {
        let attrs = serde_json::json!({
            "teacher": true, "grade": 7, "nick": "Al\nBert", "tags": ["a", "b"],
            "gone": null, "a=b": 1,
        });
        assert_eq!(
            attr_lines(&attrs),
            "grade=7\nnick=Al Bert\ntags=[\"a\",\"b\"]\nteacher=true\n"
        );
        assert_eq!(attr_lines(&serde_json::json!(null)), "");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("class-*", "class-7"));
        assert!(!glob_match("class-*", "room-7"));
        assert!(glob_match("*-vip", "room-vip"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c-y-b"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn mint_and_verify() {
        let auth = Auth::dev();
        let grants = Grants {
            create: true,
            rooms: vec!["team-*".into()],
            roles: vec![Role::Audience],
            admin: false,
        };
        let token = auth
            .mint(&claims_for(
                "u1",
                "Ann",
                grants.clone(),
                Duration::from_secs(60),
            ))
            .unwrap();
        let id = auth.verify(&token).unwrap();
        assert_eq!(id.user.as_str(), "u1");
        assert_eq!(id.name, "Ann");
        assert_eq!(id.grants, grants);
        assert!(id.may_enter("team-a"));
        assert!(!id.may_enter("other"));
        assert_eq!(id.default_role(), Some(Role::Audience));
    }

    #[test]
    fn forged_expired_and_weak() {
        let auth = Auth::dev();
        let other = Auth::new(&"x".repeat(40)).unwrap();
        let token = other
            .mint(&claims_for(
                "u",
                "",
                Grants::default(),
                Duration::from_secs(60),
            ))
            .unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::BadSignature)));

        let mut claims = claims_for("u", "", Grants::default(), Duration::ZERO);
        claims.exp -= 3600;
        let token = auth.mint(&claims).unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Expired)));

        assert!(matches!(auth.verify(""), Err(AuthError::Missing)));
        assert!(matches!(auth.verify("a.b.c"), Err(AuthError::Malformed(_))));
        assert!(matches!(Auth::new("short"), Err(AuthError::WeakSecret(5))));
    }
}
