// voicegw agent softphone: signalling protocol v2 (docs/softphone-protocol.md).
// Plain JS, no build step. The token lives in sessionStorage so a reload of
// this tab signs in again and resumes the agent's call.
"use strict";

(() => {
  const PROTOCOL = 2;
  const TOKEN_KEY = "voicegw.softphone.token";
  const WS_PATH = "/api/v1/softphone/ws";
  const CLOSE_AUTH = 4003;
  const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];
  const MEDIA_STATES = new Set(["active", "held"]);
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    ws: null,
    retry: 0,
    stop: false, // signed out or replaced: no reconnect
    agent: null,
    presence: null,
    iceServers: [],
    call: null,
    pc: null,
    mic: null,
    negotiating: false,
    audioCtx: null,
    analyser: null,
    rms: 0,
    peakRms: 0,
  };

  function send(type, body = {}) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify({ v: PROTOCOL, type, ...body }));
    }
  }

  function showError(text) {
    $("error").textContent = text || "";
  }

  function setConnection(text) {
    $("connection").textContent = text;
    $("connection").dataset.state = text;
  }

  // --- socket -------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + WS_PATH);
    state.ws = ws;
    setConnection("connecting");
    ws.onopen = () => ws.send(JSON.stringify({ v: PROTOCOL, type: "hello", token: state.token }));
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_e) {
        return;
      }
      const handler = HANDLERS[message.type];
      if (handler) handler(message);
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      setConnection("offline");
      if (event.code === CLOSE_AUTH) {
        signOut("sign-in failed: check the token");
        return;
      }
      if (state.stop) return;
      // Network loss: back off and sign in again; media keeps flowing meanwhile.
      const delay = Math.min(5000, 250 * 2 ** state.retry);
      state.retry = Math.min(state.retry + 1, 5);
      setTimeout(connect, delay);
    };
  }

  function signOut(reason) {
    state.stop = true;
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.ws) state.ws.close();
    closeMedia();
    $("phone").hidden = true;
    $("signin").hidden = false;
    showError(reason);
  }

  // --- messages from the server --------------------------------------------------------

  const HANDLERS = {
    welcome(message) {
      state.retry = 0;
      state.agent = message.agent;
      state.iceServers = message.ice_servers || [];
      setConnection("online");
      $("signin").hidden = true;
      $("phone").hidden = false;
      $("agent-id").textContent = String(message.agent.id);
      $("tenant-id").textContent = message.agent.tenant_id;
      showPresence(message.presence);
      showError("");
      renderCall(message.call);
      const pcAlive = state.pc && !["failed", "closed"].includes(state.pc.connectionState);
      if (message.call && MEDIA_STATES.has(message.call.state) && !pcAlive) {
        // A reloaded page: the call went on without us; negotiate fresh media.
        startMedia().catch((e) => showError("media: " + e));
      }
    },
    "presence.changed"(message) {
      showPresence(message.presence);
    },
    "call.offered"(message) {
      renderCall(message.call);
    },
    "call.state"(message) {
      renderCall(message.call);
    },
    "webrtc.answer"(message) {
      if (state.pc && state.call && message.call_id === state.call.call_id) {
        state.pc.setRemoteDescription({ type: "answer", sdp: message.sdp })
          .catch((e) => showError("media: " + e));
      }
    },
    transcript(message) {
      addTranscript(message);
    },
    "session.replaced"() {
      signOut("signed in elsewhere: this page was closed");
    },
    error(message) {
      showError(message.code + ": " + message.message);
    },
    pong() {},
  };

  function showPresence(presence) {
    state.presence = presence;
    $("presence").value = presence;
    $("presence").disabled = presence === "on_call";
  }

  function renderCall(call) {
    const previous = state.call;
    state.call = call && call.state !== "ended" ? call : null;
    const ringing = call && call.state === "ringing";
    const connected = call && MEDIA_STATES.has(call.state);
    $("ring").hidden = !ringing;
    $("call").hidden = !connected;
    if (ringing) {
      // A consult call comes from a colleague about a caller (warm transfer).
      $("ring-kind").textContent = call.from_agent != null
        ? "Consult from agent " + call.from_agent + " about" : "Incoming call";
      $("ring-tenant").textContent = call.tenant_id;
      $("ring-caller").textContent = call.caller;
    }
    if (connected) {
      if (!previous || previous.call_id !== call.call_id) $("transcript").replaceChildren();
      $("call-caller").textContent = call.from_agent != null
        ? "agent " + call.from_agent + " (consult about " + call.caller + ")" : call.caller;
      renderTransfer(call);
      $("call-state").textContent = call.state;
      $("call-media").textContent = call.media;
      $("hold").setAttribute("aria-pressed", String(call.held));
      $("mute").setAttribute("aria-pressed", String(call.muted));
      $("consent-state").textContent = call.consent.state;
      $("recording-state").textContent = call.recording.state;
      $("secure-pause").setAttribute("aria-pressed", String(call.recording.secure_pause));
      if (state.mic) state.mic.getAudioTracks().forEach((t) => { t.enabled = !call.muted; });
    }
    if (!state.call) closeMedia();
  }

  function renderTransfer(call) {
    const transfer = call.transfer;
    const live = transfer && (transfer.state === "ringing" || transfer.state === "consulting");
    // A consult call itself cannot be transferred: only the agent holding the caller can.
    $("transfer-form").hidden = call.from_agent != null || Boolean(live);
    $("transfer").hidden = !transfer;
    if (!transfer) return;
    $("transfer-mode").textContent = transfer.mode;
    $("transfer-to").textContent = transfer.target;
    $("transfer-state").textContent = transfer.state + (transfer.reason ? " (" + transfer.reason + ")" : "");
    $("transfer-complete").hidden = transfer.state !== "consulting";
    $("transfer-cancel").hidden = !live;
  }

  function addTranscript(message) {
    if (!state.call || message.call_id !== state.call.call_id) return;
    const list = $("transcript");
    const last = list.lastElementChild;
    const item = last && last.classList.contains("partial") ? last : document.createElement("li");
    item.className = message.final ? "final" : "partial";
    item.textContent = message.speaker + ": " + message.text;
    if (item !== last) list.appendChild(item);
    list.scrollTop = list.scrollHeight;
  }

  // --- media --------------------------------------------------------------------------

  function gatheringDone(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  async function startMedia() {
    if (state.negotiating || !state.call) return;
    state.negotiating = true;
    try {
      const callId = state.call.call_id;
      closeMedia();
      const mic = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
      const pc = new RTCPeerConnection({ iceServers: state.iceServers });
      state.mic = mic;
      state.pc = pc;
      mic.getAudioTracks().forEach((track) => {
        track.enabled = !state.call.muted;
        pc.addTrack(track, mic);
      });
      pc.ontrack = (event) => attachRemote(event.streams[0] || new MediaStream([event.track]));
      pc.onconnectionstatechange = () => { $("call-media").textContent = pc.connectionState; };
      await pc.setLocalDescription(await pc.createOffer());
      // The gateway (aiortc) does not trickle: one offer with every candidate is simplest.
      await gatheringDone(pc, 3000);
      send("webrtc.offer", { call_id: callId, sdp: pc.localDescription.sdp });
    } finally {
      state.negotiating = false;
    }
  }

  function attachRemote(stream) {
    // Chromium only pulls remote WebRTC audio through WebAudio while a media element plays it.
    const audio = $("remote-audio");
    audio.srcObject = stream;
    audio.play().catch(() => {});
    if (!state.audioCtx) state.audioCtx = new AudioContext();
    state.audioCtx.resume().catch(() => {});
    const analyser = state.audioCtx.createAnalyser();
    analyser.fftSize = 2048;
    state.audioCtx.createMediaStreamSource(stream).connect(analyser);
    state.analyser = analyser;
  }

  function closeMedia() {
    if (state.pc) state.pc.close();
    if (state.mic) state.mic.getTracks().forEach((t) => t.stop());
    state.pc = null;
    state.mic = null;
    state.analyser = null;
    $("remote-audio").srcObject = null;
  }

  const samples = new Float32Array(2048);
  setInterval(() => {
    if (!state.analyser) {
      state.rms = 0;
      return;
    }
    state.analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    state.rms = Math.sqrt(sum / samples.length);
    state.peakRms = Math.max(state.peakRms, state.rms);
  }, 50);

  // --- controls -----------------------------------------------------------------------

  function onCall(type, extra) {
    if (state.call) send(type, { call_id: state.call.call_id, ...(extra ? extra() : {}) });
  }

  function wire() {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("token").value.trim();
      $("token").value = "";
      sessionStorage.setItem(TOKEN_KEY, state.token);
      state.stop = false;
      connect();
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("presence").addEventListener("change", () => send("presence.set", { presence: $("presence").value }));
    $("answer").addEventListener("click", () => {
      onCall("call.answer");
      // The server handles one socket's messages in order: answer first, then the offer.
      startMedia().catch((e) => showError("media: " + e));
    });
    $("decline").addEventListener("click", () => onCall("call.decline"));
    $("hangup").addEventListener("click", () => onCall("call.hangup"));
    $("hold").addEventListener("click", () => onCall("call.hold", () => ({ on: !state.call.held })));
    $("mute").addEventListener("click", () => onCall("call.mute", () => ({ on: !state.call.muted })));
    $("secure-pause").addEventListener("click", () =>
      onCall("recording.secure_pause", () => ({ on: !state.call.recording.secure_pause })));
    $("transfer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const mode = event.submitter ? event.submitter.value : "warm";
      onCall("transfer.start", () => ({
        mode,
        target_kind: $("transfer-kind").value,
        target: $("transfer-target").value.trim(),
      }));
    });
    $("transfer-complete").addEventListener("click", () => onCall("transfer.complete"));
    $("transfer-cancel").addEventListener("click", () => onCall("transfer.cancel"));
    for (const key of KEYS) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = key;
      button.addEventListener("click", () => {
        // In the call's audio (RFC 4733) when the answer negotiated telephone-event,
        // as a phone would send it; over signalling otherwise.
        const sender = state.pc && state.pc.getSenders().find((s) => s.dtmf);
        const active = state.call && state.call.state === "active";
        if (active && sender && sender.dtmf.canInsertDTMF) {
          sender.dtmf.insertDTMF(key, 100, 70);
        } else {
          onCall("call.dtmf", () => ({ digits: key }));
        }
      });
      $("keypad").appendChild(button);
    }
  }

  // For end-to-end tests: what the page hears and shows, read through Playwright.
  window.voicegwTest = {
    rms: () => state.rms,
    peakRms: () => state.peakRms,
    resetPeak: () => { state.peakRms = 0; },
    snapshot: () => ({
      connection: $("connection").dataset.state,
      presence: state.presence,
      call: state.call,
      media: state.pc ? state.pc.connectionState : "none",
    }),
    dropSocket: () => { if (state.ws) state.ws.close(); },
  };

  wire();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    state.token = saved;
    connect();
  }
})();
