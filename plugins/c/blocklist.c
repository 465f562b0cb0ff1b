/*
 * blocklist: a permission plugin in C, on plugins/sdk-c/conclave_plugin.h.
 *
 *   [policy.plugins.blocklist.config]
 *   users = ["mallory", "trudy"]  # may not join any room
 *   audio_rooms = "radio-"        # rooms whose name starts with this are audio only
 *
 * - A join by a listed user is refused, naming them:
 *   `403 mallory is blocked on this server`.
 * - In audio-only rooms, publishing video is refused (`403 radio-1 is audio
 *   only`), and so is joining in video mode, which as an interactor starts
 *   with the camera on (`403 radio-1 is audio only: join in audio mode`).
 *   Members with the admin grant, and tokens minted with the attribute
 *   `presenter=true`, are exempt.
 * - Everything else: abstain. An unknown key is refused, so a typo cannot
 *   quietly switch a rule off.
 */
#include "conclave_plugin.h"

/* Slices of the configuration text, which stays where the host wrote it
 * for the life of the instance. Empty: the rule is off. */
static conclave_str blocked_users; /* comma-separated user ids */
static conclave_str audio_prefix;  /* room-name prefix */

static int configure(conclave_str config) {
    conclave_str rest = config, key, value;
    while (conclave_next_entry(&rest, &key, &value)) {
        if (conclave_is(key, "users"))
            blocked_users = value;
        else if (conclave_is(key, "audio_rooms"))
            audio_prefix = value;
        else
            return conclave_refuse("blocklist: unknown config key (use users, audio_rooms)");
    }
    return 0;
}

/* Denies with "<who><why>", built on the stack. */
static int deny_naming(conclave_str who, const char *why) {
    conclave_text reason;
    conclave_text_clear(&reason);
    conclave_text_add(&reason, who);
    conclave_text_add_cstr(&reason, why);
    return conclave_deny_str(403, conclave_text_str(&reason));
}

/* May this member use video in an audio-only room anyway? */
static bool exempt(const conclave_request *req) {
    conclave_str presenter;
    return req->admin ||
           (conclave_attr(req, "presenter", &presenter) && conclave_is(presenter, "true"));
}

static int check(const conclave_request *req) {
    if (req->action == CONCLAVE_JOIN && conclave_list_contains(blocked_users, req->user))
        return deny_naming(req->user, " is blocked on this server");

    bool audio_only = audio_prefix.len > 0 && conclave_starts_with(req->room, audio_prefix);
    if (!audio_only)
        return CONCLAVE_ABSTAIN;
    switch (req->action) {
    case CONCLAVE_PUBLISH_VIDEO:
        return exempt(req) ? CONCLAVE_ABSTAIN : deny_naming(req->room, " is audio only");
    case CONCLAVE_JOIN:
        if (req->kind == CONCLAVE_KIND_VIDEO && !exempt(req))
            return deny_naming(req->room, " is audio only: join in audio mode");
        return CONCLAVE_ABSTAIN;
    default: /* including codes a newer host may send */
        return CONCLAVE_ABSTAIN;
    }
}

CONCLAVE_EXPORT_CONFIGURE(configure)
CONCLAVE_EXPORT_CHECK(check)
