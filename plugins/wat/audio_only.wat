;; A permission plugin written by hand in WebAssembly text, to show the ABI
;; needs no SDK: it keeps video off the server. Publishing video is refused,
;; and so is joining in video mode (a member who joins in video mode as an
;; interactor starts with its camera on).
;;
;; ABI v1 (docs/plugins.md): export `memory`, `conclave_abi_version`,
;; `conclave_alloc` and `conclave_check`; the request header's first u32 is
;; the action (2 = join, 4 = publish video) and the third the kind (2 =
;; video; for a join, the mode). Return 0 to abstain, or a status code to
;; deny after passing the reason to `conclave.deny_reason`.
(module
  (import "conclave" "deny_reason" (func $deny_reason (param i32 i32)))
  (memory (export "memory") 1)
  ;; The reason texts live at offsets 16 and 64; the host's buffers start at 1024.
  (data (i32.const 16) "video is disabled on this server")
  (data (i32.const 64) "video is disabled on this server: join in audio mode")
  (global $next (mut i32) (i32.const 1024))

  (func (export "conclave_abi_version") (result i32)
    i32.const 1)

  ;; A bump allocator: the host asks twice per instance.
  (func (export "conclave_alloc") (param $size i32) (result i32)
    (local $at i32)
    global.get $next
    local.set $at
    global.get $next
    local.get $size
    i32.add
    i32.const 7
    i32.add
    i32.const -8
    i32.and
    global.set $next
    local.get $at)

  (func (export "conclave_check") (param $ptr i32) (param $len i32) (result i32)
    (local $action i32)
    local.get $ptr
    i32.load
    local.set $action
    ;; publish video
    local.get $action
    i32.const 4
    i32.eq
    if
      i32.const 16
      i32.const 32
      call $deny_reason
      i32.const 403
      return
    end
    ;; join, in video mode
    local.get $action
    i32.const 2
    i32.eq
    local.get $ptr
    i32.load offset=8
    i32.const 2
    i32.eq
    i32.and
    if
      i32.const 64
      i32.const 52
      call $deny_reason
      i32.const 403
      return
    end
    i32.const 0))
