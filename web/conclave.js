// The conclave browser client: one page, no build step, no dependencies.
//
// It speaks the signaling protocol of docs/protocol.md over the WebSocket at
// /ws (hello first, request ids, a ping at the interval hello gives) and
// carries media over one RTCPeerConnection per membership, for which the
// server is always the offerer: the client answers each `media_offer` in
// turn, publishing its microphone and camera on the m-lines the offer lists
// under `publish`, and trickles its ICE candidates with `ice_candidate`.
//
// Reloading the page resumes: the room, token, mode and role are kept in
// sessionStorage while joined, and the page joins again on load; the server
// treats that as a takeover within the reconnect grace window.
//
// A lost connection is taken back the same way, by joining again within the
// grace. In a cluster, hello lists every serving node's signaling URL; the
// page tries the one it was on, then its own origin, then the others, so it
// gets back into its room when the node that served it dies (the room opens
// again on a live node as its members come back).
//
// Tests and debugging read the page through `window.conclave`:
//
//   conclave.state()  -> {
//     connected, user, name, joined, room, channelId, role, mode, resumed,
//     url,    // the signaling URL of the open connection
//     nodes,  // a cluster's signaling URLs from hello ([] on a single server)
//     members: [{user, name, role, mode, audio_muted, video_muted,
//                screen_sharing, speaking, level, element}],
//                // element: "audio" | "video" | null, the remote media element
//     lastError: {request, code, message} | null,  // the latest failure
//     errors: [...],                               // every failure, oldest first
//     disconnected: {room, reason, code} | null,   // the membership the server ended last
//     media: {state, connection, offers, answers, candidates, publishing, error}
//   }
//   conclave.stats()    -> Promise<{[user]: {audio?: {packetsReceived, packetsLost,
//                          totalAudioEnergy, audioLevel, totalSamplesReceived,
//                          concealedSamples}, video?: {packetsReceived, packetsLost,
//                          framesReceived, framesDecoded, keyFramesDecoded, pliCount,
//                          nackCount}}}>, from each receiver's inbound-rtp
//   conclave.outbound() -> Promise<{audio?: {packetsSent}, video?: {packetsSent}}>
//   conclave.sdp()      -> {remote, local}: the current offer and answer, for debugging
//
// Everything it returns is a copy; changing it changes nothing.
"use strict";

(() => {
  const PROTOCOL_VERSION = 1;
  const SESSION_KEY = "conclave.session";
  const SPEAKING_HOLD_MS = 1500;
  const LOG_LINES = 300;

  // Status codes from docs/protocol.md section 6, as words.
  const STATUS_WORDS = {
    101: "timeout",
    200: "ok",
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    417: "conflict",
    429: "rate limited",
    500: "server error",
    503: "unavailable",
    11001: "disconnected",
    11002: "version unsupported",
  };

  const REASON_WORDS = {
    normal: "left",
    timeout: "timed out",
    kicked: "was removed (kicked)",
    room_closed: "room was closed",
    shutdown: "server is shutting down",
    replaced: "joined from another tab or device",
  };

  const $ = (id) => document.getElementById(id);

  // ---- state ---------------------------------------------------------------

  const state = {
    connected: false,
    user: null,
    name: null,
    joined: false,
    room: null,
    channelId: null,
    role: null,
    mode: null,
    resumed: false,
    url: null,
    nodes: [],
    customInfo: "",
    /** user id -> member object from the server, plus speaking and level */
    members: new Map(),
    lastError: null,
    errors: [],
    disconnected: null,
  };

  let signal = null; // the open Signal, if any
  let signalToken = null; // the token it said hello with
  let media = null; // the Media of the current membership

  // ---- logging and errors ----------------------------------------------------

  function log(text) {
    const list = $("log");
    const line = document.createElement("li");
    line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    list.append(line);
    while (list.childElementCount > LOG_LINES) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  function describe(code, message) {
    const words = STATUS_WORDS[code] || "error";
    return message ? `${code} ${words}: ${message}` : `${code} ${words}`;
  }

  /** Records a failure and shows it in words. `code` is null for local failures. */
  function fail(request, code, message) {
    const error = { request, code, message };
    state.lastError = error;
    state.errors.push(error);
    const text = code == null ? `${request}: ${message}` : `${request}: ${describe(code, message)}`;
    const box = $("error");
    box.textContent = text;
    box.hidden = false;
    log(`error ${text}`);
  }

  function clearError() {
    $("error").hidden = true;
  }

  /** Shows a failed response; returns true when the response was a success. */
  function check(request, resp) {
    if (resp.code === 200) return true;
    fail(request, resp.code, resp.message || "");
    return false;
  }

  // ---- signaling -----------------------------------------------------------

  /** One WebSocket to /ws: requests with ids, responses matched, events passed on. */
  class Signal {
    constructor(onEvent, onClose) {
      this.nextId = 1;
      this.pending = new Map();
      this.onEvent = onEvent;
      this.onClose = onClose;
      this.heartbeat = null;
      this.closing = false;
      this.ws = null;
    }

    /** Opens the WebSocket at `url`; only a socket that opened reports its close. */
    open(url) {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        this.ws = ws;
        let opened = false;
        ws.onopen = () => {
          opened = true;
          resolve();
        };
        ws.onerror = () => reject(new Error(`cannot reach ${url}`));
        ws.onmessage = (e) => this.receive(e.data);
        ws.onclose = (e) => {
          clearInterval(this.heartbeat);
          for (const [, p] of this.pending) {
            p.resolve({ type: "response", code: null, message: "connection closed" });
          }
          this.pending.clear();
          reject(new Error(`connection closed (${e.code})`));
          if (opened && !this.closing) this.onClose(e.code, e.reason);
        };
      });
    }

    receive(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        log(`unreadable frame from the server: ${text.slice(0, 80)}`);
        return;
      }
      if (msg.type === "response") {
        const waiting = msg.id == null ? undefined : this.pending.get(msg.id);
        if (waiting) {
          this.pending.delete(msg.id);
          waiting.resolve(msg);
        } else if (msg.code !== 200) {
          fail("(unmatched)", msg.code, msg.message || "");
        }
        return;
      }
      this.onEvent(msg);
    }

    /** Sends a request and resolves with its response (whatever its code). */
    request(type, fields = {}) {
      const id = this.nextId++;
      return new Promise((resolve) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          resolve({ type: "response", id, code: null, message: "not connected" });
          return;
        }
        this.pending.set(id, { resolve });
        this.ws.send(JSON.stringify({ id, type, ...fields }));
      });
    }

    async hello(token) {
      const resp = await this.request("hello", { version: PROTOCOL_VERSION, token });
      if (resp.code === 200) {
        const every = Math.max(1000, resp.data.heartbeat_interval_ms || 5000);
        // A ping without an id is a heartbeat: the server answers nothing.
        this.heartbeat = setInterval(() => {
          if (this.ws && this.ws.readyState === WebSocket.OPEN) {
            this.ws.send('{"type":"ping"}');
          }
        }, every);
      }
      return resp;
    }

    close() {
      this.closing = true;
      clearInterval(this.heartbeat);
      if (this.ws) this.ws.close(1000, "bye");
    }
  }

  /** A response-shaped failure for a request that never reached the server. */
  function notSent(resp) {
    return resp.code == null;
  }

  // ---- media -----------------------------------------------------------------

  /** One RTCPeerConnection per membership; the server offers, this answers. */
  class Media {
    constructor(sig, mode) {
      this.signal = sig;
      this.mode = mode;
      this.pc = null;
      this.local = new Map(); // kind -> MediaStreamTrack
      this.queue = Promise.resolve();
      this.started = null; // the media_start response
      this.midTrack = new Map(); // mid -> {user, kind} of a remote track
      this.publishing = []; // kinds this member sends
      this.remote = new Map(); // user -> MediaStream
      this.pendingCandidates = [];
      this.answered = false;
      this.closed = false;
      this.iceServers = [];
      this.counts = { offers: 0, answers: 0, candidates: 0 };
      this.phase = "starting";
      this.error = null;
    }

    async start() {
      this.started = this.signal.request("media_start");
      const resp = await this.started;
      if (this.closed) return;
      if (resp.code !== 200) {
        this.phase = "unavailable";
        this.error = describe(resp.code, resp.message);
        fail("media_start", resp.code, resp.message || "");
      } else {
        this.phase = "negotiating";
      }
      render();
    }

    /** Offers are answered one at a time, in the order they came. */
    offer(msg) {
      this.queue = this.queue
        .then(() => this.answer(msg))
        .catch((e) => {
          this.error = String(e && e.message ? e.message : e);
          fail("media_offer", null, this.error);
        });
    }

    createPc() {
      const pc = new RTCPeerConnection({ iceServers: this.iceServers });
      pc.onicecandidate = (e) => this.candidate(e.candidate);
      pc.onconnectionstatechange = () => {
        if (this.closed) return;
        log(`media ${pc.connectionState}`);
        if (pc.connectionState === "failed") fail("media", null, "the media connection failed");
        render();
      };
      pc.ontrack = () => this.collectRemote();
      this.pc = pc;
    }

    async answer(msg) {
      if (this.started) await this.started;
      if (this.closed) return;
      // STUN/TURN servers come with each offer; the first one sets them up.
      if (Array.isArray(msg.ice_servers)) this.iceServers = msg.ice_servers;
      if (!this.pc) this.createPc();
      const pc = this.pc;
      this.counts.offers++;
      this.answered = false;
      this.midTrack = new Map((msg.tracks || []).map((t) => [String(t.mid), { user: t.user, kind: t.kind }]));
      await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });

      const publish = msg.publish || [];
      if (publish.length) await this.acquire(publish.map((p) => p.kind));
      const publishMids = new Set(publish.map((p) => String(p.mid)));
      for (const t of pc.getTransceivers()) {
        if (t.mid == null || t.stopped) continue;
        if (publishMids.has(t.mid)) {
          const entry = publish.find((p) => String(p.mid) === t.mid);
          const track = this.local.get(entry.kind) || null;
          await t.sender.replaceTrack(track);
          t.direction = track ? "sendonly" : "inactive";
        } else if (t.sender.track) {
          // Published before, not any more (became audience): stop sending.
          await t.sender.replaceTrack(null);
          t.direction = "inactive";
        }
      }
      this.publishing = publish.filter((p) => this.local.has(p.kind)).map((p) => p.kind);
      applySelfMute();

      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      if (this.closed) return;
      const resp = await this.signal.request("media_answer", { sdp: pc.localDescription.sdp });
      // The membership may have ended while the answer was out (a kick):
      // its 404 must not replace the reason the page already shows.
      if (this.closed) return;
      this.counts.answers++;
      this.answered = true;
      check("media_answer", resp);
      const waiting = this.pendingCandidates.splice(0);
      for (const c of waiting) this.sendCandidate(c);
      this.phase = "answered";
      this.collectRemote();
      render();
    }

    /** Gets the microphone and (in video mode) the camera, once each. */
    async acquire(kinds) {
      const wantAudio = kinds.includes("audio") && !this.local.has("audio");
      const wantVideo = kinds.includes("video") && this.mode === "video" && !this.local.has("video");
      if (!wantAudio && !wantVideo) return;
      try {
        const stream = await navigator.mediaDevices.getUserMedia({
          audio: wantAudio,
          video: wantVideo ? { width: { ideal: 640 }, height: { ideal: 360 } } : false,
        });
        for (const track of stream.getTracks()) this.local.set(track.kind, track);
      } catch (e) {
        fail("camera/microphone", null, `${e.name}: ${e.message}`);
      }
      render();
    }

    candidate(c) {
      if (!c || !c.candidate) return; // end of candidates: nothing to send
      // An mDNS name (xxxx.local) means nothing to the server; it learns the
      // address from the connectivity checks instead.
      const address = c.address || c.candidate.split(" ")[4] || "";
      if (address.endsWith(".local")) return;
      if (!this.answered) {
        this.pendingCandidates.push(c);
        return;
      }
      this.sendCandidate(c);
    }

    async sendCandidate(c) {
      this.counts.candidates++;
      const resp = await this.signal.request("ice_candidate", {
        candidate: c.candidate,
        sdp_mid: c.sdpMid,
        sdp_mline_index: c.sdpMLineIndex,
      });
      if (!this.closed && !notSent(resp)) check("ice_candidate", resp);
    }

    /** Groups the receivers of the latest offer's tracks into one stream per user. */
    collectRemote() {
      if (!this.pc) return;
      const byUser = new Map();
      for (const t of this.pc.getTransceivers()) {
        const remote = t.mid == null ? undefined : this.midTrack.get(t.mid);
        if (!remote || !t.receiver.track) continue;
        if (!byUser.has(remote.user)) byUser.set(remote.user, []);
        byUser.get(remote.user).push(t.receiver.track);
      }
      for (const [user, tracks] of byUser) {
        let stream = this.remote.get(user);
        const same = stream && stream.getTracks().length === tracks.length &&
          tracks.every((tr) => stream.getTrackById(tr.id));
        if (!same) {
          stream = new MediaStream(tracks);
          this.remote.set(user, stream);
        }
      }
      for (const user of [...this.remote.keys()]) {
        if (!byUser.has(user)) this.remote.delete(user);
      }
      render();
    }

    async stats() {
      const out = {};
      if (!this.pc) return out;
      for (const t of this.pc.getTransceivers()) {
        const remote = t.mid == null ? undefined : this.midTrack.get(t.mid);
        if (!remote) continue;
        const report = await t.receiver.getStats();
        report.forEach((s) => {
          if (s.type !== "inbound-rtp") return;
          const entry = (out[remote.user] = out[remote.user] || {});
          if (s.kind === "audio") {
            entry.audio = {
              packetsReceived: s.packetsReceived || 0,
              packetsLost: s.packetsLost || 0,
              totalAudioEnergy: s.totalAudioEnergy || 0,
              audioLevel: s.audioLevel || 0,
              totalSamplesReceived: s.totalSamplesReceived || 0,
              concealedSamples: s.concealedSamples || 0,
            };
          } else if (s.kind === "video") {
            entry.video = {
              packetsReceived: s.packetsReceived || 0,
              packetsLost: s.packetsLost || 0,
              framesReceived: s.framesReceived || 0,
              framesDecoded: s.framesDecoded || 0,
              keyFramesDecoded: s.keyFramesDecoded || 0,
              pliCount: s.pliCount || 0,
              nackCount: s.nackCount || 0,
            };
          }
        });
      }
      return out;
    }

    async outbound() {
      const out = {};
      if (!this.pc) return out;
      const report = await this.pc.getStats();
      report.forEach((s) => {
        if (s.type !== "outbound-rtp") return;
        const entry = (out[s.kind] = out[s.kind] || { packetsSent: 0 });
        entry.packetsSent += s.packetsSent || 0;
      });
      return out;
    }

    snapshot() {
      return {
        state: this.phase,
        connection: this.pc ? this.pc.connectionState : "new",
        offers: this.counts.offers,
        answers: this.counts.answers,
        candidates: this.counts.candidates,
        publishing: [...this.publishing],
        error: this.error,
      };
    }

    close() {
      this.closed = true;
      if (this.pc) this.pc.close();
      this.pc = null;
      for (const track of this.local.values()) track.stop();
      this.local.clear();
      this.remote.clear();
    }
  }

  /** Local tracks follow this member's mute state, whoever changed it. */
  function applySelfMute() {
    if (!media) return;
    const me = state.members.get(state.user);
    if (!me) return;
    const audio = media.local.get("audio");
    if (audio) audio.enabled = !me.audio_muted;
    const video = media.local.get("video");
    if (video) video.enabled = !me.video_muted;
  }

  // ---- session ---------------------------------------------------------------

  function saveSession(joined) {
    const session = {
      room: $("room").value,
      token: $("token").value.trim(),
      role: $("role").value,
      mode: $("mode").value,
      user: $("user").value,
      joined,
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  }

  function loadSession() {
    try {
      return JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    } catch {
      return null;
    }
  }

  /** The token's claims, read without verifying (the server verifies). */
  function claims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return {};
    }
  }

  /** An open, authenticated connection for `token`, reusing the current one. */
  async function connect(token) {
    if (signal && signalToken === token && state.connected) return true;
    if (signal) signal.close();
    signal = new Signal(onEvent, onSocketClosed);
    signalToken = token;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const own = `${scheme}//${location.host}/ws`;
    const urls = [...new Set([state.url, own, ...state.nodes].filter(Boolean))];
    let reached = null;
    let last = null;
    for (const url of urls) {
      try {
        await signal.open(url);
        reached = url;
        break;
      } catch (e) {
        last = e;
      }
    }
    if (!reached) {
      fail("connect", null, last ? last.message : "nowhere to connect");
      signal = null;
      return false;
    }
    state.url = reached;
    state.connected = true;
    const resp = await signal.hello(token);
    if (!check("hello", resp)) {
      signal.close();
      signal = null;
      state.connected = false;
      render();
      return false;
    }
    state.user = resp.data.user;
    state.name = resp.data.name;
    state.nodes = resp.data.nodes || [];
    log(`connected as ${state.user} to ${resp.data.server}`);
    render();
    return true;
  }

  let joining = false;

  async function join() {
    if (joining || state.joined) return;
    const room = $("room").value;
    const token = $("token").value.trim();
    const role = $("role").value;
    const mode = $("mode").value;
    if (!room) return fail("join", null, "enter a room name");
    if (!token) return fail("join", null, "enter a token (or use a dev token)");
    joining = true;
    render();
    try {
      clearError();
      if (!(await connect(token))) return;
      let resp = await signal.request("join", { room, mode, role });
      if (resp.code === 404 && claims(token).grants?.create === true) {
        log(`room ${room} does not exist; creating it`);
        const created = await signal.request("create", { room });
        if (created.code !== 200 && created.code !== 417) {
          check("create", created);
          return;
        }
        resp = await signal.request("join", { room, mode, role });
      }
      if (!check("join", resp)) {
        if (resp.code !== 417) saveSession(false);
        return;
      }
      enterRoom(resp.data);
      saveSession(true);
      media = new Media(signal, state.mode);
      render();
      await media.start();
    } finally {
      joining = false;
      render();
    }
  }

  function enterRoom(data) {
    state.joined = true;
    state.room = data.room;
    state.channelId = data.channel_id;
    state.role = data.role;
    state.mode = data.mode;
    state.resumed = data.resumed;
    state.customInfo = data.custom_info || "";
    state.disconnected = null;
    state.members = new Map(data.members.map((m) => [m.user, { ...m, speaking: false, level: 127 }]));
    log(`${data.resumed ? "resumed" : "joined"} ${data.room} as ${data.role} (${data.mode})`);
  }

  /** Ends the membership locally: media off, members gone, no resume on reload. */
  function exitRoom() {
    if (media) media.close();
    media = null;
    state.joined = false;
    state.room = null;
    state.channelId = null;
    state.role = null;
    state.members = new Map();
    for (const timer of speakingTimers.values()) clearTimeout(timer);
    speakingTimers.clear();
    saveSession(false);
    render();
  }

  async function leave() {
    if (!signal || !state.joined) return;
    const resp = await signal.request("leave");
    // 404: the membership is already gone, which is what leaving wants.
    if (resp.code === 200 || resp.code === 404) {
      log(`left ${state.room}`);
      exitRoom();
    } else {
      check("leave", resp);
    }
  }

  async function act(request, fields) {
    if (!signal) return;
    const resp = await signal.request(request, fields);
    check(request, resp);
  }

  let reconnects = 0;

  function onSocketClosed(code, reason) {
    state.connected = false;
    signal = null;
    const wasIn = state.joined;
    const text = `connection closed (${code}${reason ? ` ${reason}` : ""})`;
    fail("connection", null, text);
    if (media) media.close();
    media = null;
    state.joined = false;
    render();
    // A membership survives a lost connection for the grace window: try to
    // take it back until then.
    if (wasIn) rejoin();
  }

  /** Joins again after a lost connection, through any node; gives up after about the grace. */
  function rejoin() {
    if (reconnects >= 8) {
      reconnects = 0;
      saveSession(false);
      return;
    }
    reconnects++;
    setTimeout(async () => {
      await join();
      const busy = state.lastError && state.lastError.code === 503;
      if (state.joined) reconnects = 0;
      // Unreachable, or the room is between nodes: try again shortly.
      else if (!state.connected || busy) rejoin();
    }, Math.min(500 * reconnects, 3000));
  }

  // ---- events ------------------------------------------------------------------

  const speakingTimers = new Map();

  function onEvent(msg) {
    switch (msg.type) {
      case "member_joined":
        state.members.set(msg.member.user, { ...msg.member, speaking: false, level: 127 });
        log(`${msg.member.user} joined as ${msg.member.role}`);
        break;
      case "member_left":
        state.members.delete(msg.user);
        log(`${msg.user} ${REASON_WORDS[msg.reason] || msg.reason}`);
        break;
      case "role_changed": {
        const m = state.members.get(msg.user);
        if (m) m.role = msg.role;
        if (msg.user === state.user) state.role = msg.role;
        log(`${msg.user} is now ${msg.role} (by ${msg.operate_by})`);
        break;
      }
      case "mute_changed": {
        const m = state.members.get(msg.user);
        if (m) m[msg.kind === "audio" ? "audio_muted" : "video_muted"] = msg.muted;
        if (msg.user === state.user) applySelfMute();
        log(`${msg.user} ${msg.kind} ${msg.muted ? "muted" : "unmuted"} (by ${msg.operate_by})`);
        break;
      }
      case "screen_share_changed": {
        const m = state.members.get(msg.user);
        if (m) m.screen_sharing = msg.sharing;
        break;
      }
      case "disconnected":
        state.disconnected = { room: msg.room, reason: msg.reason, code: msg.code };
        fail("room", msg.code, `you left ${msg.room}: ${REASON_WORDS[msg.reason] || msg.reason}`);
        exitRoom();
        break;
      case "media_offer":
        if (media) media.offer(msg);
        break;
      case "volume":
        for (const lv of msg.levels || []) speaking(lv);
        break;
      case "data":
        log(`data from ${msg.from}: ${JSON.stringify(msg.payload)}`);
        break;
      case "metadata_changed":
        log(`room metadata: ${JSON.stringify(msg.metadata)}`);
        break;
      default:
        log(`event ${msg.type}`);
    }
    render();
  }

  function speaking(lv) {
    const m = state.members.get(lv.user);
    if (!m) return;
    m.speaking = !!lv.speaking;
    m.level = lv.level;
    clearTimeout(speakingTimers.get(lv.user));
    speakingTimers.set(
      lv.user,
      setTimeout(() => {
        const still = state.members.get(lv.user);
        if (still) {
          still.speaking = false;
          still.level = 127;
        }
        speakingTimers.delete(lv.user);
        render();
      }, SPEAKING_HOLD_MS),
    );
  }

  // ---- rendering -----------------------------------------------------------------

  const tiles = new Map(); // user -> {li, media element}

  function button(label, onClick, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (cls) b.className = cls;
    b.addEventListener("click", onClick);
    return b;
  }

  function tile(m) {
    let t = tiles.get(m.user);
    if (t) return t;
    const li = document.createElement("li");
    li.className = "member";
    li.dataset.user = m.user;
    const who = document.createElement("div");
    who.className = "who";
    const facts = document.createElement("div");
    facts.className = "facts";
    const slot = document.createElement("div");
    slot.className = "media";
    const actions = document.createElement("div");
    actions.className = "actions";
    li.append(who, facts, slot, actions);
    t = { li, who, facts, slot, actions, element: null, stream: null };
    if (m.user !== state.user) {
      t.muteAudio = button("", () => {
        const cur = state.members.get(m.user);
        act("mute", { kind: "audio", muted: !cur.audio_muted, user: m.user });
      }, "mute-audio");
      t.muteVideo = button("", () => {
        const cur = state.members.get(m.user);
        act("mute", { kind: "video", muted: !cur.video_muted, user: m.user });
      }, "mute-video");
      t.setRole = button("", () => {
        const cur = state.members.get(m.user);
        act("set_role", { role: cur.role === "audience" ? "interactor" : "audience", user: m.user });
      }, "set-role");
      t.kick = button("Kick", () => act("kick", { user: m.user }), "kick");
      actions.append(t.muteAudio, t.muteVideo, t.setRole, t.kick);
    }
    tiles.set(m.user, t);
    return t;
  }

  function attach(t, kind, stream, muted) {
    if (!t.element || t.element.tagName.toLowerCase() !== kind) {
      if (t.element) t.element.remove();
      const el = document.createElement(kind);
      el.autoplay = true;
      el.playsInline = true;
      if (kind === "audio") el.controls = true;
      el.muted = muted;
      t.slot.append(el);
      t.element = el;
      t.stream = null;
    }
    if (t.stream !== stream) {
      t.element.srcObject = stream;
      t.stream = stream;
      if (stream) {
        t.element.play().catch((e) => log(`playback of ${t.li.dataset.user} waits for a click: ${e.name}`));
      }
    }
  }

  function detach(t) {
    if (t.element) t.element.remove();
    t.element = null;
    t.stream = null;
  }

  function render() {
    $("connection").textContent = state.connected ? "connected" : "offline";
    $("connection").className = `pill ${state.connected ? "on" : ""}`;
    $("identity").textContent = state.user ? `${state.name} (${state.user})` : "";
    $("join").disabled = joining || state.joined;
    $("join-form").hidden = state.joined;
    $("room-view").hidden = !state.joined;
    if (state.joined) {
      $("room-name").textContent = state.room;
      $("room-info").textContent =
        `${state.role}, ${state.mode}${state.resumed ? ", resumed" : ""}` +
        (state.customInfo ? ` — ${state.customInfo}` : "");
      const me = state.members.get(state.user);
      $("toggle-audio").textContent = me && !me.audio_muted ? "Mute mic" : "Unmute mic";
      $("toggle-video").textContent = me && !me.video_muted ? "Stop camera" : "Start camera";
      $("toggle-video").disabled = state.mode !== "video";
      $("toggle-role").textContent = state.role === "audience" ? "Become interactor" : "Become audience";
      const ms = media ? media.snapshot() : null;
      $("media-state").textContent = ms ? `media: ${ms.connection === "new" ? ms.state : ms.connection}` : "media: idle";
      $("media-state").className = `pill ${ms && ms.connection === "connected" ? "on" : ms && ms.error ? "bad" : ""}`;
    }

    const list = $("members");
    for (const [user, t] of tiles) {
      if (!state.members.has(user)) {
        detach(t);
        t.li.remove();
        tiles.delete(user);
      }
    }
    for (const m of state.members.values()) {
      const t = tile(m);
      const self = m.user === state.user;
      t.who.textContent = `${m.name}${m.name !== m.user ? ` (${m.user})` : ""}${self ? " — you" : ""}`;
      t.facts.textContent = [
        m.role,
        m.mode,
        m.audio_muted ? "mic off" : "mic on",
        m.mode === "video" ? (m.video_muted ? "camera off" : "camera on") : null,
        m.screen_sharing ? "sharing screen" : null,
        m.speaking ? "speaking" : null,
      ].filter(Boolean).join(" · ");
      t.li.classList.toggle("speaking", !!m.speaking);
      t.li.dataset.role = m.role;
      if (self) {
        // The own camera, muted; one stream object per track so the
        // element is not reset on every render.
        const video = media && media.local.get("video");
        if (video) {
          if (t.previewTrack !== video) {
            t.previewTrack = video;
            t.preview = new MediaStream([video]);
          }
          attach(t, "video", t.preview, true);
        } else {
          detach(t);
        }
      } else {
        const stream = media ? media.remote.get(m.user) : undefined;
        if (stream) {
          const kind = stream.getVideoTracks().length && state.mode === "video" ? "video" : "audio";
          attach(t, kind, stream, false);
        } else {
          detach(t);
        }
        t.muteAudio.textContent = m.audio_muted ? "Unmute mic" : "Mute mic";
        t.muteVideo.textContent = m.video_muted ? "Start camera" : "Stop camera";
        t.muteVideo.hidden = m.mode !== "video";
        t.setRole.textContent = m.role === "audience" ? "Make interactor" : "Make audience";
      }
      if (t.li.parentNode !== list) list.append(t.li);
    }
  }

  // ---- wiring ----------------------------------------------------------------------

  async function devToken() {
    const user = $("user").value.trim();
    if (!user) return fail("dev token", null, "enter a user name");
    const resp = await fetch(`/dev/token?user=${encodeURIComponent(user)}`);
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok || !body || !body.token) {
      fail("dev token", body && body.code ? body.code : resp.status, body && body.message ? body.message : resp.statusText);
      return;
    }
    $("token").value = body.token;
    clearError();
    log(`dev token for ${user}`);
  }

  function isDev() {
    return document.body.dataset.dev === "true";
  }

  function init() {
    $("join-form").addEventListener("submit", (e) => {
      e.preventDefault();
      join();
    });
    $("dev-token").addEventListener("click", devToken);
    $("leave").addEventListener("click", leave);
    $("toggle-audio").addEventListener("click", () => {
      const me = state.members.get(state.user);
      if (me) act("mute", { kind: "audio", muted: !me.audio_muted });
    });
    $("toggle-video").addEventListener("click", () => {
      const me = state.members.get(state.user);
      if (me) act("mute", { kind: "video", muted: !me.video_muted });
    });
    $("toggle-role").addEventListener("click", () => {
      act("set_role", { role: state.role === "audience" ? "interactor" : "audience" });
    });

    const session = loadSession();
    if (session) {
      $("room").value = session.room || "";
      $("token").value = session.token || "";
      $("role").value = session.role || "interactor";
      $("mode").value = session.mode || "video";
      $("user").value = session.user || "";
    }
    render();
    if (session && session.joined) {
      log("resuming the session from before the reload");
      join();
    } else if (isDev() && !$("token").value) {
      if (!$("user").value) $("user").value = `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
      devToken();
    }
  }

  window.conclave = Object.freeze({
    state() {
      const copy = (v) => JSON.parse(JSON.stringify(v));
      return copy({
        connected: state.connected,
        user: state.user,
        name: state.name,
        joined: state.joined,
        room: state.room,
        channelId: state.channelId,
        role: state.role,
        mode: state.mode,
        resumed: state.resumed,
        url: state.url,
        nodes: state.nodes,
        members: [...state.members.values()].map((m) => {
          const t = tiles.get(m.user);
          return { ...m, element: t && t.element ? t.element.tagName.toLowerCase() : null };
        }),
        lastError: state.lastError,
        errors: state.errors,
        disconnected: state.disconnected,
        media: media ? media.snapshot() : null,
      });
    },
    stats() {
      return media ? media.stats() : Promise.resolve({});
    },
    outbound() {
      return media ? media.outbound() : Promise.resolve({});
    },
    sdp() {
      const pc = media && media.pc;
      return {
        remote: pc && pc.remoteDescription ? pc.remoteDescription.sdp : null,
        local: pc && pc.localDescription ? pc.localDescription.sdp : null,
      };
    },
  });

  document.addEventListener("DOMContentLoaded", init);
})();
