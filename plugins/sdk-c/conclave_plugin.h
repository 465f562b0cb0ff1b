/*
 * conclave_plugin.h: the C guest SDK for conclave permission plugins,
 * ABI version 1 (docs/plugins.md, "ABI version 1" and "Writing a plugin in C").
 *
 * A plugin answers one question, many times: may this action happen? In C:
 *
 *     #include "conclave_plugin.h"
 *
 *     static int check(const conclave_request *req) {
 *         if (req->action == CONCLAVE_PUBLISH_VIDEO)
 *             return conclave_deny(403, "video is off on this server");
 *         return CONCLAVE_ABSTAIN;
 *     }
 *
 *     CONCLAVE_EXPORT_CHECK(check)
 *
 * and build it, as C11 (it is not C++), for wasm32 with no C library
 * (tools/build-plugins does this for each .c file in plugins/c):
 *
 *     clang --target=wasm32 -std=c11 -O2 -ffreestanding -nostdlib -I<this dir> \
 *         -Wl,--no-entry -Wl,--stack-first -Wl,--strip-all -o novideo.wasm novideo.c
 *
 * What this header does for you:
 *
 *   - the exports the host requires: `memory` (the linker's own),
 *     `conclave_abi_version` (returns 1) and `conclave_alloc` (a bump
 *     allocator that grows memory as needed and never frees);
 *   - CONCLAVE_EXPORT_CHECK(fn) exports `conclave_check`: it decodes the
 *     request buffer into a `conclave_request` and returns what `fn` returns;
 *   - CONCLAVE_EXPORT_CONFIGURE(fn), optional, exports `conclave_configure`:
 *     `fn` gets the plugin's configuration text, once per instance;
 *   - the three host imports (`conclave.deny_reason`, `conclave.log`,
 *     `conclave.now_ms`), imported only if the plugin uses them;
 *   - string helpers that need no C library: comparison, prefix and `*`
 *     pattern matching, `key=value` lines, comma-separated lists, and a
 *     small buffer to build a deny reason in;
 *   - `memset` and `memcpy`, which the compiler may call on its own (to
 *     zero or copy a large struct) and which there is no libc to provide.
 *
 * Nothing here allocates or calls the host on the per-check path unless the
 * plugin asks (a deny reason, a log line, the clock).
 *
 * State: one instance of the plugin runs per room, so global variables are
 * per room and persist between checks.
 *
 * A plugin of several .c files: #define CONCLAVE_PLUGIN_HELPERS_ONLY before
 * including this header in every file but one (that one defines the exports,
 * the allocator, memset and memcpy), and use each CONCLAVE_EXPORT_* once.
 */
#ifndef CONCLAVE_PLUGIN_H
#define CONCLAVE_PLUGIN_H

/* The compiler's own freestanding headers (no C library involved). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Off wasm32, only the helpers compile (CONCLAVE_PLUGIN_HELPERS_ONLY): enough
 * to test a plugin's logic natively, with the three conclave__host_*
 * functions below defined by the test. */
#if defined(__wasm32__)
#define CONCLAVE__IMPORT(name) __attribute__((import_module("conclave"), import_name(name)))
#define CONCLAVE__EXPORT(name) __attribute__((export_name(name)))
#elif defined(CONCLAVE_PLUGIN_HELPERS_ONLY)
#define CONCLAVE__IMPORT(name)
#define CONCLAVE__EXPORT(name)
#else
#error "conclave_plugin.h is for wasm32: build with clang --target=wasm32"
#endif

/* ------------------------------------------------------------------------
 * Constants of the ABI
 * ------------------------------------------------------------------------ */

#define CONCLAVE_ABI_VERSION 1
/* Bytes of the fixed request header. */
#define CONCLAVE_HEADER_LEN 36
/* Size of the request buffer the host asks for (and the most a request is). */
#define CONCLAVE_REQUEST_CAP 4096
/* The host keeps at most this many bytes of a deny reason or a log line. */
#define CONCLAVE_REASON_MAX 1024

/* Verdicts. Return one of these, or what conclave_deny returns. */
#define CONCLAVE_ABSTAIN 0 /* no opinion: the next plugin, Lua and the room decide */
#define CONCLAVE_ALLOW 1   /* explicit "no objection"; does not override a deny */

/* Action codes (docs/plugins.md section 3). They never change meaning; a
 * newer host may send codes not listed here: abstain on those. */
enum {
    CONCLAVE_CREATE_ROOM = 1,
    CONCLAVE_JOIN = 2,
    CONCLAVE_PUBLISH_AUDIO = 3,
    CONCLAVE_PUBLISH_VIDEO = 4,
    CONCLAVE_SHARE_SCREEN = 5,
    CONCLAVE_MUTE_OTHER = 6,
    CONCLAVE_MUTE_EVERYONE = 7,
    CONCLAVE_KICK = 8,
    CONCLAVE_SET_ROLE = 9,
    CONCLAVE_SEND_DATA = 10,
    CONCLAVE_STOP_SCREEN_SHARE = 11 /* stop another member's screen share */
};

/* The request's role: the role asked for (join, set_role), else none. */
enum {
    CONCLAVE_ROLE_NONE = 0,
    CONCLAVE_ROLE_INTERACTOR = 1,
    CONCLAVE_ROLE_AUDIENCE = 2
};

/* The request's media kind; for a join, the mode (video or audio). */
enum {
    CONCLAVE_KIND_NONE = 0,
    CONCLAVE_KIND_AUDIO = 1,
    CONCLAVE_KIND_VIDEO = 2
};

/* Log levels for conclave_log. */
enum {
    CONCLAVE_LOG_ERROR = 0,
    CONCLAVE_LOG_WARN = 1,
    CONCLAVE_LOG_INFO = 2,
    CONCLAVE_LOG_DEBUG = 3
};

/* ------------------------------------------------------------------------
 * Strings
 *
 * Text from the host is not NUL-terminated: it comes as a pointer and a
 * length. A conclave_str is such a slice; it never owns its bytes.
 * ------------------------------------------------------------------------ */

typedef struct conclave_str {
    const char *ptr;
    size_t len;
} conclave_str;

/* A conclave_str for a string literal, its length counted at compile time. */
#define CONCLAVE_STR(literal) ((conclave_str){(literal), sizeof(literal) - 1})

/* A conclave_str for a NUL-terminated string. */
static inline conclave_str conclave_cstr(const char *s) {
    size_t n = 0;
    while (s[n] != '\0')
        n++;
    return (conclave_str){s, n};
}

/* Bytes [from, from + n) of s; callers keep them within s. */
static inline conclave_str conclave__slice(conclave_str s, size_t from, size_t n) {
    return (conclave_str){s.ptr + from, n};
}

/* a and b hold the same bytes. */
static inline bool conclave_eq(conclave_str a, conclave_str b) {
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (a.ptr[i] != b.ptr[i])
            return false;
    return true;
}

/* s holds exactly the NUL-terminated text (conclave_is(req->user, "alice")). */
static inline bool conclave_is(conclave_str s, const char *text) {
    return conclave_eq(s, conclave_cstr(text));
}

static inline bool conclave_starts_with(conclave_str s, conclave_str prefix) {
    return prefix.len <= s.len && conclave_eq(conclave__slice(s, 0, prefix.len), prefix);
}

static inline bool conclave_ends_with(conclave_str s, conclave_str suffix) {
    return suffix.len <= s.len &&
           conclave_eq(conclave__slice(s, s.len - suffix.len, suffix.len), suffix);
}

/* Where needle first occurs in s, or -1 (an empty needle is found at 0). */
static inline ptrdiff_t conclave_find(conclave_str s, conclave_str needle) {
    for (size_t at = 0; at + needle.len <= s.len; at++)
        if (conclave_eq(conclave__slice(s, at, needle.len), needle))
            return (ptrdiff_t)at;
    return -1;
}

/* s without leading and trailing ASCII whitespace (space, \t, \n, \v, \f, \r). */
static inline conclave_str conclave_trim(conclave_str s) {
    while (s.len > 0 && (s.ptr[0] == ' ' || (s.ptr[0] >= '\t' && s.ptr[0] <= '\r'))) {
        s.ptr++;
        s.len--;
    }
    while (s.len > 0 && (s.ptr[s.len - 1] == ' ' ||
                         (s.ptr[s.len - 1] >= '\t' && s.ptr[s.len - 1] <= '\r')))
        s.len--;
    return s;
}

/*
 * Matches text against pattern, where `*` matches any run of characters and
 * everything else is literal; the whole text must match. The same rules as
 * the server's room patterns and the Rust SDK's glob_match: "vip-*" matches
 * "vip-1" and "vip-", not "vip"; "*" matches everything.
 */
static inline bool conclave_glob_match(conclave_str pattern, conclave_str text) {
    ptrdiff_t star = conclave_find(pattern, CONCLAVE_STR("*"));
    if (star < 0)
        return conclave_eq(pattern, text);
    conclave_str head = conclave__slice(pattern, 0, (size_t)star);
    if (!conclave_starts_with(text, head))
        return false;
    conclave_str rest = conclave__slice(text, head.len, text.len - head.len);
    conclave_str tail = conclave__slice(pattern, head.len + 1, pattern.len - head.len - 1);
    /* Each piece between two stars, leftmost first; the last piece must end the text. */
    for (;;) {
        star = conclave_find(tail, CONCLAVE_STR("*"));
        if (star < 0)
            return conclave_ends_with(rest, tail);
        conclave_str piece = conclave__slice(tail, 0, (size_t)star);
        ptrdiff_t at = conclave_find(rest, piece);
        if (at < 0)
            return false;
        size_t used = (size_t)at + piece.len;
        rest = conclave__slice(rest, used, rest.len - used);
        tail = conclave__slice(tail, piece.len + 1, tail.len - piece.len - 1);
    }
}

/* ------------------------------------------------------------------------
 * key=value lines (the configuration text, and the token attributes)
 *
 * One entry a line, each line ending in \n. Key and value are trimmed;
 * blank lines, lines without `=` and lines with an empty key are skipped
 * (the same rules as the Rust SDK's config_entries). The value is
 * everything after the first `=`.
 * ------------------------------------------------------------------------ */

/*
 * Reads the next entry of *rest into *key and *value and advances *rest past
 * it; false when no entry is left. To walk every entry:
 *
 *     conclave_str rest = config, key, value;
 *     while (conclave_next_entry(&rest, &key, &value)) { ... }
 */
static inline bool conclave_next_entry(conclave_str *rest, conclave_str *key,
                                       conclave_str *value) {
    while (rest->len > 0) {
        ptrdiff_t nl = conclave_find(*rest, CONCLAVE_STR("\n"));
        size_t line_len = nl < 0 ? rest->len : (size_t)nl;
        conclave_str line = conclave__slice(*rest, 0, line_len);
        size_t skip = nl < 0 ? line_len : line_len + 1;
        *rest = conclave__slice(*rest, skip, rest->len - skip);
        ptrdiff_t eq = conclave_find(line, CONCLAVE_STR("="));
        if (eq < 0)
            continue;
        *key = conclave_trim(conclave__slice(line, 0, (size_t)eq));
        *value = conclave_trim(conclave__slice(line, (size_t)eq + 1, line.len - (size_t)eq - 1));
        if (key->len > 0)
            return true;
    }
    return false;
}

/* The value of the first entry named key in lines; false when there is none. */
static inline bool conclave_lookup(conclave_str lines, const char *key, conclave_str *value) {
    conclave_str k, v;
    while (conclave_next_entry(&lines, &k, &v)) {
        if (conclave_is(k, key)) {
            *value = v;
            return true;
        }
    }
    return false;
}

/*
 * Reads the next item of a comma-separated list (a TOML array reaches a
 * plugin as `alice,bob`) into *item, trimmed, and advances *rest; false
 * when the list is used up. Empty items ("a,,b", a trailing comma) are
 * skipped, so an empty list has no items.
 */
static inline bool conclave_next_item(conclave_str *rest, conclave_str *item) {
    while (rest->len > 0) {
        ptrdiff_t comma = conclave_find(*rest, CONCLAVE_STR(","));
        size_t item_len = comma < 0 ? rest->len : (size_t)comma;
        *item = conclave_trim(conclave__slice(*rest, 0, item_len));
        size_t skip = comma < 0 ? item_len : item_len + 1;
        *rest = conclave__slice(*rest, skip, rest->len - skip);
        if (item->len > 0)
            return true;
    }
    return false;
}

/* One of the comma-separated items of list is exactly item. */
static inline bool conclave_list_contains(conclave_str list, conclave_str item) {
    conclave_str each;
    while (conclave_next_item(&list, &each))
        if (conclave_eq(each, item))
            return true;
    return false;
}

/* ------------------------------------------------------------------------
 * The request
 * ------------------------------------------------------------------------ */

/*
 * One permission question, decoded from the host's request buffer. The
 * strings point into that buffer: they are valid UTF-8 (the host cuts long
 * ones on a character boundary), are not NUL-terminated, and are
 * overwritten by the next request, so copy what you want to keep.
 */
typedef struct conclave_request {
    uint32_t action;      /* CONCLAVE_JOIN, ...; abstain on codes you do not know */
    uint32_t role;        /* CONCLAVE_ROLE_*: the role asked for (join, set_role) */
    uint32_t kind;        /* CONCLAVE_KIND_*: publish/mute kind; for a join, the mode */
    bool muted;           /* mute actions: true to mute, false to unmute */
    bool admin;           /* the actor's token holds the admin grant */
    uint64_t permissions; /* community permission bits (bit n: key n), else 0 */
    conclave_str room;    /* the room's name */
    conclave_str user;    /* who acts */
    conclave_str target;  /* whom the action is aimed at; empty when nobody */
    conclave_str attrs;   /* the actor's token attributes, key=value lines; may be empty */
} conclave_request;

/* Bit `bit` of the actor's community permissions is set (docs/community.md#keys). */
static inline bool conclave_has_permission(const conclave_request *req, unsigned bit) {
    return bit < 64 && ((req->permissions >> bit) & 1) != 0;
}

/* The value of token attribute key (`true`, `7` and compact JSON for
 * non-strings); false when the token has none by that name. */
static inline bool conclave_attr(const conclave_request *req, const char *key,
                                 conclave_str *value) {
    return conclave_lookup(req->attrs, key, value);
}

/* A little-endian u32 at p, read a byte at a time (p need not be aligned). */
static inline uint32_t conclave__u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/*
 * Decodes the ABI v1 layout (all integers little-endian):
 *
 *   0  u32 action      4  u32 role        8  u32 kind
 *   12 u32 flags (bit 0 muted, bit 1 admin)
 *   16 u64 permissions
 *   24 u32 room_len    28 u32 user_len    32 u32 target_len
 *   36 room bytes, user bytes, target bytes (no terminators, no padding)
 *   then, if at least 4 bytes are left: u32 attrs_len and the attribute bytes
 *
 * False if the lengths run past len (the check then abstains).
 * CONCLAVE_EXPORT_CHECK calls this; call it yourself only to test a decoder.
 */
static inline bool conclave_decode(const unsigned char *buf, size_t len, conclave_request *req) {
    if (len < CONCLAVE_HEADER_LEN)
        return false;
    /* 64-bit sums: three 32-bit lengths cannot wrap around. */
    uint64_t room_end = CONCLAVE_HEADER_LEN + (uint64_t)conclave__u32(buf + 24);
    uint64_t user_end = room_end + conclave__u32(buf + 28);
    uint64_t target_end = user_end + conclave__u32(buf + 32);
    if (target_end > len)
        return false;
    const char *text = (const char *)buf;
    req->attrs = (conclave_str){text + target_end, 0};
    /* The attributes block came later in version 1: read it only when len leaves room. */
    if (len - target_end >= 4) {
        uint64_t attrs_len = conclave__u32(buf + target_end);
        if (target_end + 4 + attrs_len > len)
            return false;
        req->attrs = (conclave_str){text + target_end + 4, (size_t)attrs_len};
    }
    uint32_t flags = conclave__u32(buf + 12);
    req->action = conclave__u32(buf + 0);
    req->role = conclave__u32(buf + 4);
    req->kind = conclave__u32(buf + 8);
    req->muted = (flags & 1) != 0;
    req->admin = (flags & 2) != 0;
    req->permissions = (uint64_t)conclave__u32(buf + 16) | (uint64_t)conclave__u32(buf + 20) << 32;
    req->room = (conclave_str){text + CONCLAVE_HEADER_LEN,
                               (size_t)(room_end - CONCLAVE_HEADER_LEN)};
    req->user = (conclave_str){text + room_end, (size_t)(user_end - room_end)};
    req->target = (conclave_str){text + user_end, (size_t)(target_end - user_end)};
    return true;
}

/* ------------------------------------------------------------------------
 * The host: imports from the module "conclave". A function the plugin never
 * calls is not imported. Pointers and lengths are into the plugin's memory;
 * the host copies the bytes before it returns.
 * ------------------------------------------------------------------------ */

CONCLAVE__IMPORT("deny_reason")
void conclave__host_deny_reason(const char *ptr, size_t len);

CONCLAVE__IMPORT("log")
void conclave__host_log(int32_t level, const char *ptr, size_t len);

CONCLAVE__IMPORT("now_ms")
int64_t conclave__host_now_ms(void);

/* Wall-clock time, Unix milliseconds: the host's clock (a plugin has no other). */
static inline int64_t conclave_now_ms(void) {
    return conclave__host_now_ms();
}

/* Writes to the server log, tagged plugin=<name> (CONCLAVE_LOG_*; at most 1024 bytes). */
static inline void conclave_log_str(int level, conclave_str message) {
    conclave__host_log(level, message.ptr, message.len);
}

static inline void conclave_log(int level, const char *message) {
    conclave_log_str(level, conclave_cstr(message));
}

/* ------------------------------------------------------------------------
 * Verdicts
 * ------------------------------------------------------------------------ */

/*
 * Denies with a protocol status code and a reason the client is shown:
 * `return conclave_deny(403, "members only");`. The client gets `status` if
 * the protocol defines it (400, 401, 403, 404, 429, ...), else 403. A
 * status the ABI would not read as a deny (under 100, 200, above 65535)
 * becomes 403, so this always denies.
 */
static inline int conclave_deny_str(int status, conclave_str reason) {
    conclave__host_deny_reason(reason.ptr, reason.len);
    if (status < 100 || status > 65535 || status == 200)
        return 403;
    return status;
}

static inline int conclave_deny(int status, const char *reason) {
    return conclave_deny_str(status, conclave_cstr(reason));
}

/*
 * A reason (or log line) built from pieces, on the stack: no allocation.
 * The host reads it when conclave_deny_str is called, so it may go out of
 * scope afterwards.
 *
 *     conclave_text msg;
 *     conclave_text_clear(&msg);
 *     conclave_text_add(&msg, req->user);
 *     conclave_text_add_cstr(&msg, " may not join");
 *     return conclave_deny_str(403, conclave_text_str(&msg));
 *
 * Text past CONCLAVE_REASON_MAX bytes (what the host keeps) is dropped, on
 * a UTF-8 character boundary.
 */
typedef struct conclave_text {
    size_t len;
    char bytes[CONCLAVE_REASON_MAX];
} conclave_text;

static inline void conclave_text_clear(conclave_text *t) {
    t->len = 0;
}

static inline void conclave_text_add(conclave_text *t, conclave_str s) {
    size_t room = CONCLAVE_REASON_MAX - t->len;
    size_t n = s.len;
    if (n > room) {
        n = room;
        /* Do not split a character: back up to the start of the one cut. */
        while (n > 0 && ((unsigned char)s.ptr[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++)
        t->bytes[t->len + i] = s.ptr[i];
    t->len += n;
}

static inline void conclave_text_add_cstr(conclave_text *t, const char *s) {
    conclave_text_add(t, conclave_cstr(s));
}

static inline conclave_str conclave_text_str(const conclave_text *t) {
    return (conclave_str){t->bytes, t->len};
}

/* ------------------------------------------------------------------------
 * Exports
 * ------------------------------------------------------------------------ */

/*
 * Memory that is never freed, 8-byte aligned, growing the module's memory
 * when needed; traps when memory cannot grow (past [policy.wasm]
 * memory_bytes). The host calls it as the export `conclave_alloc` (for the
 * 4096-byte request buffer, then for the configuration text); a plugin may
 * call it too, from its configure function, for tables it builds once.
 */
void *conclave_alloc(int32_t size);

/*
 * CONCLAVE_EXPORT_CHECK(fn), where fn is `int fn(const conclave_request *req)`,
 * exports `conclave_check`. fn returns CONCLAVE_ABSTAIN, CONCLAVE_ALLOW or
 * what conclave_deny returns; that number is the verdict. Any other value
 * (negative, 2-99, 200, above 65535) is a plugin failure. A request that
 * does not decode is answered with abstain, without calling fn.
 */
#define CONCLAVE_EXPORT_CHECK(fn)                                         \
    CONCLAVE__EXPORT("conclave_check")                                    \
    int32_t conclave__check(const unsigned char *ptr, int32_t len) {      \
        conclave_request req;                                             \
        if (len < 0 || !conclave_decode(ptr, (size_t)len, &req))          \
            return CONCLAVE_ABSTAIN;                                      \
        return (fn)(&req);                                                \
    }

/*
 * CONCLAVE_EXPORT_CONFIGURE(fn), where fn is `int fn(conclave_str config)`,
 * exports `conclave_configure`, called once per instance before any check
 * with the [policy.plugins.<name>.config] table as key=value lines (sorted
 * by key; arrays as comma-separated items; empty when there is none). Return
 * 0 to accept, anything else to refuse: the plugin then fails to load
 * ("the plugin refused its configuration"); log why with conclave_refuse.
 *
 * The text stays where the host wrote it for the life of the instance
 * (nothing is freed), so slices of it can be kept in globals.
 * Without this export the host sends no configuration.
 */
#define CONCLAVE_EXPORT_CONFIGURE(fn)                                     \
    CONCLAVE__EXPORT("conclave_configure")                                \
    int32_t conclave__configure(const char *ptr, int32_t len) {           \
        return (fn)((conclave_str){ptr, len < 0 ? 0 : (size_t)len});      \
    }

/* Logs why at error level and refuses the configuration: `return conclave_refuse("...")`. */
static inline int conclave_refuse(const char *why) {
    conclave_log(CONCLAVE_LOG_ERROR, why);
    return 1;
}

#ifndef CONCLAVE_PLUGIN_HELPERS_ONLY

/* The host refuses any version but the one it speaks. */
CONCLAVE__EXPORT("conclave_abi_version") int32_t conclave_abi_version(void) {
    return CONCLAVE_ABI_VERSION;
}

/* Where the linker's data and stack end: the heap starts here. */
extern unsigned char __heap_base;
static uintptr_t conclave__next;

CONCLAVE__EXPORT("conclave_alloc") void *conclave_alloc(int32_t size) {
    if (conclave__next == 0)
        conclave__next = ((uintptr_t)&__heap_base + 7) & ~(uintptr_t)7;
    uint64_t at = conclave__next;
    uint64_t end = at + (uint64_t)(size < 1 ? 1 : size);
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536;
    if (end > have) {
        uint64_t pages = (end - have + 65535) / 65536;
        /* wasm32 memory ends at 4 GiB; memory.grow answers -1 past the host's limit. */
        if (end > ((uint64_t)1 << 32) ||
            __builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1)
            __builtin_trap();
    }
    conclave__next = (uintptr_t)((end + 7) & ~(uint64_t)7);
    return (void *)(uintptr_t)at;
}

/* The compiler may emit calls to these (zeroing or copying a large struct);
 * weak, so a plugin that brings its own wins. no_builtin keeps the loops
 * from being turned back into calls to themselves. */
__attribute__((weak, no_builtin)) void *memset(void *dst, int c, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

__attribute__((weak, no_builtin)) void *memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--)
        *d++ = *s++;
    return dst;
}

#endif /* CONCLAVE_PLUGIN_HELPERS_ONLY */

#endif /* CONCLAVE_PLUGIN_H */
