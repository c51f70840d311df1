// The chat page: one WebSocket to the chat backend (see docs/protocol.md), no framework.
//
// Configuration, first match wins:
//   ?ws=wss://example.execute-api.eu-west-1.amazonaws.com/prod   (query parameter)
//   window.CHAT_WS_URL = "wss://…"                               (set by a script before this one)
//   ws(s)://<this host>/ws                                       (the local stack)

const STORAGE = { session: "chatMemory.sessionId", token: "chatMemory.guestToken", strategy: "chatMemory.strategy" };
const BACKOFF = { firstMs: 500, maxMs: 15000, factor: 2 };
const MEMORY_LABELS = {
  cache_only: ["cache only", "The long-term store is unreachable: recent turns come from the cache and this turn is saved when it is back."],
  stateless: ["off", "Memory is unreachable: the assistant sees only your latest message and will not remember it."],
};
const STATE_LABELS = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};
// Errors after which the message was not taken: it goes back into the composer.
const REFUSED = new Set(["bad_request", "unknown_action", "empty_message", "message_too_large", "busy", "forbidden", "rate_limited"]);
const STICK_TO_BOTTOM_PX = 120;
const LOAD_EARLIER_PX = 200; // scrolled this close to the top, the previous page of turns loads
const SESSION_TIMEOUT_MS = 15000; // an open socket that never answers getSession is retried
// A refused getSession is asked again on the same socket (a reconnect would not help), this
// many times, after these pauses; then the error stays on screen with a way to try again.
const SESSION_RETRY_MS = [1000, 3000];
const TITLE_RETRIES = 5; // asks for the list again while a new conversation has no title yet
const TITLE_RETRY_MS = 1500;
// getSession errors that asking again may cure (a store briefly unreachable).
const TRANSIENT = new Set(["internal", "busy"]);
const AVATAR_SVG = '<svg viewBox="0 0 32 32" width="28" height="28"><rect width="32" height="32" rx="16" fill="currentColor"/>'
  + '<path d="M9.5 12a3 3 0 0 1 3-3h7a3 3 0 0 1 3 3v4.5a3 3 0 0 1-3 3H15.5l-3.5 3v-3a3 3 0 0 1-2.5-3z" fill="#fff"/></svg>';

const $ = (selector) => document.querySelector(selector);
const ui = {
  conversation: $("#conversation"),
  messages: $("#messages"),
  live: $("#live"),
  welcome: $('[data-testid="welcome"]'),
  form: $("#composer-form"),
  composer: $("#composer"),
  send: $('[data-testid="send"]'),
  stop: $('[data-testid="stop"]'),
  connection: $('[data-testid="connection-state"]'),
  connectionLabel: $(".connection-label"),
  memory: $('[data-testid="memory-mode"]'),
  newChat: $('[data-testid="new-chat"]'),
  deleteMyData: $('[data-testid="delete-my-data"]'),
  strategy: $('[data-testid="strategy"]'),
  currentStrategy: $('[data-testid="current-strategy"]'),
  longTerm: $('[data-testid="long-term"]'),
  userFacts: $('[data-testid="user-facts"]'),
  forgetAll: $('[data-testid="forget-all"]'),
  loadEarlier: $('[data-testid="load-earlier"]'),
  chatsMenu: $('[data-testid="chats-menu"]'),
  chatList: $('[data-testid="chat-list"]'),
  chatListEmpty: $('[data-testid="chat-list-empty"]'),
  chatListMore: $('[data-testid="chat-list-more"]'),
};

// ---- configuration and storage -------------------------------------------------------------

function endpoint() {
  const fromQuery = new URLSearchParams(location.search).get("ws");
  const configured = fromQuery || window.CHAT_WS_URL;
  if (configured) {
    const url = new URL(configured, location.href);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    return url;
  }
  if (location.protocol === "http:" || location.protocol === "https:") {
    return new URL(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  }
  return new URL("ws://127.0.0.1:8080/ws");
}

const store = {
  get(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try {
      if (value == null || value === "") localStorage.removeItem(key);
      else localStorage.setItem(key, value);
    } catch { /* private mode: the session simply is not kept */ }
  },
};

/** When a JWT expires (seconds since the epoch), read from its payload; 0 if unreadable. */
function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(payload)).exp;
    return typeof exp === "number" ? exp : 0;
  } catch {
    return 0;
  }
}

/** A guest token that has expired can never connect again (the server refuses it, and a
 * browser cannot tell that refusal from a server that is down): forget it and its session and
 * become a new guest, instead of a page that retries a dead token forever. A token in use is
 * renewed by the server long before (a new one comes in the session frame). */
function forgetExpiredToken() {
  const token = store.get(STORAGE.token);
  if (!token || tokenExpiry(token) * 1000 > Date.now() + 30_000) return;
  store.set(STORAGE.token, null);
  store.set(STORAGE.session, null);
  state.erased = "Your guest session expired, so this is a new chat as a new guest."; // said once bound
}

function socketUrl() {
  forgetExpiredToken();
  const url = endpoint();
  const session = store.get(STORAGE.session);
  const token = store.get(STORAGE.token);
  if (session) url.searchParams.set("session_id", session);
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

function randomId() {
  if (crypto.randomUUID) return `m-${crypto.randomUUID()}`;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `m-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

// ---- state ---------------------------------------------------------------------------------

const state = {
  socket: null,
  connection: "connecting",
  attempts: 0,
  retryTimer: null,
  retryAt: 0,
  sessionTimer: null,
  everConnected: false,
  /** The reply being waited for: { user, bubble, text, turn, clientMessageId } or null. */
  pending: null,
  memoryMode: "full",
  /** What to say once the next session frame arrives (after `deleted`, or an expired token), or null. */
  erased: null,
  /** The strategy a new chat asked for, set on its fresh session once it is bound. */
  wantStrategy: null,
  /** The session shown, its oldest turn shown, and whether older turns remain. */
  sessionId: null,
  oldest: null,
  hasMore: false,
  /** The `before` of the page of older turns asked for, or null. */
  loadingOlder: null,
  /** Turns whose whole text was asked for: turn number -> the parts received so far. */
  wholeTurns: new Map(),
  /** getSession attempts refused on this socket, and the error shown for them. */
  sessionRefusals: 0,
  sessionError: null,
  /** The conversation list: the next page's cursor, and whether the page asked for adds to it. */
  chatCursor: null,
  chatAppending: false,
  chatRefresh: null,
  chatRetries: 0,
};

// ---- connection ----------------------------------------------------------------------------

function setConnection(name, detail) {
  state.connection = name;
  ui.connection.dataset.state = name;
  ui.connectionLabel.textContent = detail || STATE_LABELS[name];
  ui.connection.title = name === "connected" ? "Connected to the chat server"
    : name === "offline" ? "You are offline. The chat reconnects when the network is back."
    : name === "reconnecting" ? "Connection lost. Click to retry now." : "Connecting to the chat server";
  updateSendButton();
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  if (state.socket) return;
  if (navigator.onLine === false) {
    setConnection("offline");
    return;
  }
  setConnection(state.everConnected || state.attempts > 0 ? "reconnecting" : "connecting");
  let socket;
  try {
    socket = new WebSocket(socketUrl());
  } catch (err) {
    showSystem("error", `The chat address is not valid (${err.message}). Check the ?ws= setting.`);
    setConnection("offline", "Not configured");
    return;
  }
  state.socket = socket;
  socket.addEventListener("open", () => {
    if (state.socket !== socket) return;
    state.sessionRefusals = 0;
    state.loadingOlder = null;
    state.wholeTurns.clear();
    socket.send(JSON.stringify({ action: "getSession" }));
    state.sessionTimer = setTimeout(() => {
      if (state.socket === socket && state.connection !== "connected") dropSocket();
    }, SESSION_TIMEOUT_MS);
  });
  socket.addEventListener("message", (event) => {
    if (state.socket !== socket) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return; // not ours to understand
    }
    if (frame && typeof frame === "object") handleFrame(frame);
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket) return; // closed on purpose (new chat)
    state.socket = null;
    clearTimeout(state.sessionTimer);
    abandonPending("The connection dropped before the reply finished.");
    scheduleReconnect();
  });
}

/** Give up on the current socket and reconnect with backoff. */
function dropSocket() {
  const old = state.socket;
  state.socket = null;
  clearTimeout(state.sessionTimer);
  if (old) old.close(1000, "retry");
  abandonPending("The connection dropped before the reply finished.");
  scheduleReconnect();
}

function scheduleReconnect() {
  if (navigator.onLine === false) {
    setConnection("offline");
    return;
  }
  const base = Math.min(BACKOFF.maxMs, BACKOFF.firstMs * BACKOFF.factor ** state.attempts);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  state.attempts += 1;
  state.retryAt = Date.now() + delay;
  setConnection("reconnecting", countdownLabel());
  state.retryTimer = setTimeout(connect, delay);
  tickCountdown();
}

function countdownLabel() {
  const seconds = Math.ceil((state.retryAt - Date.now()) / 1000);
  return seconds >= 2 ? `Reconnecting in ${seconds}s` : STATE_LABELS.reconnecting;
}

function tickCountdown() {
  if (state.connection !== "reconnecting" || !state.retryTimer) return;
  ui.connectionLabel.textContent = countdownLabel();
  setTimeout(tickCountdown, 500);
}

function reconnectNow() {
  if (state.socket) return;
  state.attempts = 0;
  connect();
}

function restart() {
  const old = state.socket;
  state.socket = null;
  if (old) old.close(1000, "new chat");
  state.attempts = 0;
  connect();
}

window.addEventListener("online", reconnectNow);
window.addEventListener("offline", () => {
  // The socket may look open for minutes after the network went away: drop it now and
  // reconnect (and reload the session) when the browser is back online.
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  const old = state.socket;
  state.socket = null;
  if (old) old.close(1000, "offline");
  abandonPending("You went offline before the reply finished.");
  setConnection("offline");
});
ui.connection.addEventListener("click", () => {
  if (state.connection === "reconnecting" || state.connection === "offline") reconnectNow();
});

// ---- frames --------------------------------------------------------------------------------

function handleFrame(frame) {
  switch (frame.type) {
    case "session": return onSession(frame);
    case "delta": return onDelta(frame);
    case "done": return onDone(frame);
    case "notice": return onNotice(frame);
    case "error": return onError(frame);
    case "deleted": return onDeleted(frame);
    case "memory": return onMemory(frame);
    case "userMemory": return onUserMemory(frame);
    case "turn": return onTurn(frame);
    case "sessions": return onSessions(frame);
    case "renamed": return onRenamed(frame);
    default: return undefined; // frame types from newer servers are ignored
  }
}

function onSession(frame) {
  if (frame.before != null) return onOlderPage(frame);
  clearTimeout(state.sessionTimer);
  clearSessionError();
  const previous = store.get(STORAGE.session);
  if (typeof frame.sessionId === "string") store.set(STORAGE.session, frame.sessionId);
  if (typeof frame.guestToken === "string") store.set(STORAGE.token, frame.guestToken);
  state.attempts = 0;
  state.everConnected = true;
  setConnection("connected");
  const history = Array.isArray(frame.history) ? frame.history : [];
  state.sessionId = frame.sessionId;
  state.loadingOlder = null;
  renderHistory(history);
  setOlder(history, frame.hasMore);
  if (state.erased) {
    showSystem("info", state.erased);
    state.erased = null;
  } else if (previous && frame.sessionId && previous !== frame.sessionId && !frame.resumed) {
    showSystem("info", "Your earlier conversation has expired, so this is a fresh one.");
  }
  setMemoryMode(frame.memoryMode);
  if (state.wantStrategy && !frame.resumed && frame.memoryStrategy !== state.wantStrategy) {
    sendControl({ action: "setMemory", memoryStrategy: state.wantStrategy });
  } else {
    showStrategy(frame.memoryStrategy);
  }
  state.wantStrategy = null;
  sendControl({ action: "getUserMemory" });
}

function onDeleted(frame) {
  // The session frame of the fresh session follows and says so.
  state.pending = null;
  state.erased =
    frame.scope === "principal"
      ? "All your conversations and everything I remembered about you are erased."
      : "This conversation is erased.";
  updateSendButton();
}

// ---- the conversation list -----------------------------------------------------------------

/** Ask for the first page of conversations (or, with `more`, the next one). */
function listChats(more = false) {
  if (more && !state.chatCursor) return;
  sendControl(more ? { action: "listSessions", cursor: state.chatCursor } : { action: "listSessions" });
}

function onSessions(frame) {
  if (!state.chatAppending) ui.chatList.replaceChildren();
  state.chatAppending = false;
  for (const chat of Array.isArray(frame.sessions) ? frame.sessions : []) ui.chatList.append(chatItem(chat));
  state.chatCursor = typeof frame.next === "string" ? frame.next : null;
  ui.chatListMore.hidden = !state.chatCursor;
  ui.chatListEmpty.hidden = ui.chatList.children.length > 0;
  // A new conversation is titled by the server just after its first reply: while the list is
  // open and shows one untitled, it is asked for again a few times.
  clearTimeout(state.chatRefresh);
  const untitled = (frame.sessions || []).some((chat) => !chat.title);
  const onePage = ui.chatList.children.length === (frame.sessions || []).length;
  if (untitled && onePage && ui.chatsMenu.open && state.chatRetries < TITLE_RETRIES) {
    state.chatRetries += 1;
    state.chatRefresh = setTimeout(() => ui.chatsMenu.open && listChats(), TITLE_RETRY_MS);
  }
}

function chatItem(chat) {
  const item = document.createElement("li");
  item.className = "chat-item";
  item.dataset.sessionId = chat.sessionId;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "chat-open";
  open.dataset.testid = "chat-open";
  if (chat.sessionId === state.sessionId) open.setAttribute("aria-current", "true");
  const title = document.createElement("span");
  title.className = "chat-title";
  title.textContent = chat.title || "Untitled conversation";
  const meta = document.createElement("span");
  meta.className = "chat-meta";
  const expires = new Date(1000 * chat.expiresAt).toLocaleDateString();
  meta.textContent = `${chat.turns} ${chat.turns === 1 ? "message" : "messages"} · kept until ${expires}`;
  open.append(title, meta);
  open.addEventListener("click", () => {
    ui.chatsMenu.open = false;
    sendControl({ action: "openSession", sessionId: chat.sessionId });
  });
  const rename = document.createElement("button");
  rename.type = "button";
  rename.className = "chat-rename";
  rename.dataset.testid = "chat-rename";
  rename.textContent = "Rename";
  rename.setAttribute("aria-label", `Rename “${title.textContent}”`);
  rename.addEventListener("click", () => {
    const name = window.prompt("Name this conversation", chat.title || "");
    if (name && name.trim()) sendControl({ action: "renameSession", sessionId: chat.sessionId, title: name.trim() });
  });
  item.append(open, rename);
  return item;
}

function onRenamed(frame) {
  const item = [...ui.chatList.children].find((li) => li.dataset.sessionId === frame.sessionId);
  const title = item?.querySelector(".chat-title");
  if (title) title.textContent = frame.title;
}

ui.chatsMenu.addEventListener("toggle", () => {
  state.chatRetries = 0;
  if (ui.chatsMenu.open) listChats();
});
ui.chatListMore.addEventListener("click", () => {
  state.chatAppending = true;
  listChats(true);
});

// ---- a long conversation, a page at a time -------------------------------------------------

/** Remember where the shown history starts and whether older turns remain (a server that does
 * not say `hasMore` has more when the oldest turn shown is not the first). */
function setOlder(history, hasMore, { fill = true } = {}) {
  if (history.length) state.oldest = history[0].turn;
  state.hasMore = typeof hasMore === "boolean" ? hasMore : Number(state.oldest) > 1;
  ui.messages.dataset.oldest = state.oldest == null ? "" : String(state.oldest);
  ui.messages.dataset.hasMore = String(state.hasMore);
  ui.loadEarlier.hidden = !state.hasMore;
  ui.loadEarlier.textContent = "Load earlier messages";
  ui.loadEarlier.setAttribute("aria-busy", "false");
  if (fill && state.hasMore && ui.conversation.scrollHeight <= ui.conversation.clientHeight + LOAD_EARLIER_PX) {
    loadOlder(); // the page is not full yet
  }
}

function loadOlder() {
  if (!state.hasMore || state.loadingOlder != null || state.oldest == null) return;
  if (state.socket?.readyState !== WebSocket.OPEN || state.connection !== "connected") return;
  state.loadingOlder = state.oldest;
  ui.loadEarlier.textContent = "Loading earlier messages…";
  ui.loadEarlier.setAttribute("aria-busy", "true");
  state.socket.send(JSON.stringify({ action: "getSession", before: state.oldest }));
}

function onOlderPage(frame) {
  if (frame.before !== state.loadingOlder || frame.sessionId !== state.sessionId) return; // not asked for here
  state.loadingOlder = null;
  const history = Array.isArray(frame.history) ? frame.history : [];
  // Keep what is on screen where it is: the older turns go above it.
  const el = ui.conversation;
  const fromBottom = el.scrollHeight - el.scrollTop;
  ui.messages.prepend(...history.flatMap(historyNodes));
  el.scrollTop = el.scrollHeight - fromBottom;
  setOlder(history, history.length ? frame.hasMore : false);
}

ui.loadEarlier.addEventListener("click", loadOlder);
ui.conversation.addEventListener("scroll", () => {
  if (ui.conversation.scrollTop < LOAD_EARLIER_PX) loadOlder();
}, { passive: true });

function askWholeTurn(turn, button) {
  if (state.socket?.readyState !== WebSocket.OPEN) return;
  button.disabled = true;
  button.textContent = "Loading…";
  state.wholeTurns.set(turn, []);
  state.socket.send(JSON.stringify({ action: "getSession", turn }));
}

function onTurn(frame) {
  const parts = state.wholeTurns.get(frame.turn);
  if (!parts || frame.sessionId !== state.sessionId) return;
  parts.push(frame);
  if (parts.length < frame.parts) return;
  state.wholeTurns.delete(frame.turn);
  parts.sort((a, b) => a.part - b.part);
  const user = parts.map((p) => String(p.user ?? "")).join("");
  const reply = parts.some((p) => typeof p.assistant !== "string") ? null : parts.map((p) => p.assistant).join("");
  for (const item of ui.messages.querySelectorAll(`li[data-turn="${Number(frame.turn)}"][data-truncated="true"]`)) {
    const body = item.querySelector(".text");
    if (item.dataset.testid === "message-user") body.textContent = user;
    else if (reply != null) renderText(body, reply);
    for (const extra of item.querySelectorAll(".cut-note, .show-full")) extra.remove();
    item.dataset.truncated = "false";
  }
}

// ---- memory controls -----------------------------------------------------------------------

function sendControl(body) {
  if (state.socket?.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(body));
}

function showStrategy(name) {
  if (typeof name === "string") ui.currentStrategy.textContent = name.replace(/_/g, " ");
}

function showLongTerm(on) {
  ui.longTerm.checked = on;
  ui.longTerm.dataset.server = String(on); // what the server last said
}

function onMemory(frame) {
  showStrategy(frame.memoryStrategy);
  showLongTerm(frame.longTerm === true);
  sendControl({ action: "getUserMemory" });
}

function onUserMemory(frame) {
  if (frame.part === 1 || frame.part == null) ui.userFacts.replaceChildren();
  showLongTerm(frame.longTerm === true);
  for (const fact of Array.isArray(frame.facts) ? frame.facts : []) {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.textContent = `${fact.key}: ${fact.value}`;
    const forget = document.createElement("button");
    forget.type = "button";
    forget.className = "forget";
    forget.textContent = "Forget";
    forget.title = `Forget "${fact.key}"`;
    forget.addEventListener("click", () => sendControl({ action: "forgetUserMemory", key: fact.key }));
    item.append(text, forget);
    ui.userFacts.append(item);
  }
  ui.forgetAll.hidden = ui.userFacts.children.length === 0;
}

ui.strategy.value = store.get(STORAGE.strategy) || "";
ui.strategy.addEventListener("change", () => store.set(STORAGE.strategy, ui.strategy.value || null));
ui.longTerm.addEventListener("change", () => sendControl({ action: "setMemory", longTerm: ui.longTerm.checked }));
ui.forgetAll.addEventListener("click", () => sendControl({ action: "forgetUserMemory" }));

function onDelta(frame) {
  if (typeof frame.text !== "string") return;
  let reply = state.pending && (state.pending.turn == null || state.pending.turn === frame.turn) ? state.pending : null;
  if (!reply) {
    // A reply we did not ask for in this page (another tab of the same session, say).
    reply = { bubble: addMessage("assistant", ""), text: "", turn: frame.turn };
    state.pending = reply;
  }
  reply.turn = frame.turn;
  reply.text += frame.text;
  const bubble = reply.bubble;
  bubble.dataset.turn = String(frame.turn);
  bubble.dataset.status = "streaming";
  const stick = nearBottom();
  renderText(bubble.querySelector(".text"), reply.text);
  if (stick) scrollToBottom();
  announceReply(reply, false);
}

function onDone(frame) {
  const reply = state.pending;
  if (reply) {
    const bubble = reply.bubble;
    bubble.dataset.status = "done";
    bubble.setAttribute("aria-busy", "false");
    if (!reply.text) renderText(bubble.querySelector(".text"), "(empty reply)");
    if (frame.stopped) {
      bubble.dataset.stopped = "true";
      showSystem("info", "You stopped this reply; what it said so far is kept.");
    }
    if (frame.turn != null) bubble.dataset.turn = String(frame.turn);
    if (reply.user && frame.turn != null) reply.user.dataset.turn = String(frame.turn);
    announceReply(reply, true);
    state.pending = null;
  }
  setMemoryMode(frame.memoryMode);
  showStrategy(frame.memoryStrategy);
  updateSendButton();
  if (document.activeElement === document.body || document.activeElement === ui.send) ui.composer.focus();
}

function onNotice(frame) {
  const anchor = state.pending ? state.pending.bubble : null;
  showSystem("notice", frame.message || "The assistant sent a notice.", anchor);
  announce(frame.message || "");
  if (frame.code === "memory_degraded") setMemoryMode("cache_only");
  if (frame.code === "memory_unavailable") setMemoryMode("stateless");
}

function onError(frame) {
  const message = frame.message || "Something went wrong.";
  if (state.connection !== "connected" && !state.pending) return onSessionRefused(frame, message);
  if (!state.pending && (state.loadingOlder != null || state.wholeTurns.size)) {
    // A page of older turns, or a turn's whole text, was refused: the conversation goes on.
    state.loadingOlder = null;
    state.wholeTurns.clear();
    setOlder([], state.hasMore, { fill: false });
    for (const button of ui.messages.querySelectorAll(".show-full")) {
      button.disabled = false;
      button.textContent = "Show all of it";
    }
    showSystem("error", message, ui.messages.firstElementChild, frame.requestId);
    return;
  }
  const reply = state.pending;
  if (reply && reply.user) {
    if (REFUSED.has(frame.code) && !reply.text) {
      // Nothing was taken: take the message back so it can be fixed and sent again.
      reply.bubble.remove();
      reply.user.remove();
      if (!ui.composer.value.trim()) {
        ui.composer.value = reply.message;
        autosize();
      }
    } else {
      markFailed(reply.bubble, reply.text);
    }
    state.pending = null;
  }
  showSystem("error", message, null, frame.requestId);
  announce(`Error: ${message}`);
  updateSendButton();
  ui.composer.focus();
}

/** getSession was refused. Reconnecting would get the same answer, so the socket stays: a
 * session that is not ours starts afresh, a transient fault is asked again a few times, and
 * otherwise the error stays on screen (once) with a way to try again. */
function onSessionRefused(frame, message) {
  clearTimeout(state.sessionTimer);
  if (frame.code === "forbidden" && store.get(STORAGE.session)) {
    store.set(STORAGE.session, null); // not ours: a fresh session on the next socket
    showSystem("error", message, null, frame.requestId);
    dropSocket();
    return;
  }
  const socket = state.socket;
  const attempt = state.sessionRefusals;
  state.sessionRefusals += 1;
  showSessionError(message, frame.requestId, false);
  if (TRANSIENT.has(frame.code) && attempt < SESSION_RETRY_MS.length) {
    setTimeout(() => {
      if (state.socket === socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ action: "getSession" }));
        state.sessionTimer = setTimeout(() => {
          if (state.socket === socket && state.connection !== "connected") dropSocket();
        }, SESSION_TIMEOUT_MS); // no answer at all: that a reconnect may cure
      }
    }, SESSION_RETRY_MS[attempt]);
    return;
  }
  // Given up asking: the connection itself works, so messages can still be sent.
  state.attempts = 0;
  state.everConnected = true;
  setConnection("connected");
  showSessionError(message, frame.requestId, true);
}

function showSessionError(message, requestId, canRetry) {
  clearSessionError();
  const item = showSystem("error", message, null, requestId);
  if (canRetry) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "show-full";
    retry.dataset.testid = "retry-session";
    retry.textContent = "Try again";
    retry.addEventListener("click", () => {
      state.sessionRefusals = 0;
      clearSessionError();
      sendControl({ action: "getSession" });
    });
    item.append(retry);
  }
  state.sessionError = item;
}

function clearSessionError() {
  if (state.sessionError) state.sessionError.remove();
  state.sessionError = null;
}

function abandonPending(why) {
  const reply = state.pending;
  if (!reply) return;
  state.pending = null;
  markFailed(reply.bubble, reply.text);
  showSystem("error", why);
}

// ---- sending -------------------------------------------------------------------------------

function canSend() {
  return state.connection === "connected" && state.socket?.readyState === WebSocket.OPEN && !state.pending;
}

function updateSendButton() {
  const busy = Boolean(state.pending);
  ui.send.disabled = !canSend() || !ui.composer.value.trim();
  ui.send.classList.toggle("is-busy", busy);
  ui.stop.hidden = !busy;
  ui.send.hidden = busy;
  if (!busy) ui.stop.disabled = false;
  ui.send.setAttribute("aria-label", busy ? "Waiting for the reply" : "Send message");
  ui.form.setAttribute("aria-busy", String(busy));
}

function sendMessage() {
  const message = ui.composer.value;
  if (!message.trim() || !canSend()) return;
  const clientMessageId = randomId();
  state.socket.send(JSON.stringify({ action: "sendMessage", message, clientMessageId }));
  const user = addMessage("user", message, { at: Date.now() / 1000 });
  user.dataset.clientMessageId = clientMessageId;
  const bubble = addMessage("assistant", "", { status: "pending" });
  state.pending = { user, bubble, text: "", turn: null, message, clientMessageId, announced: 0 };
  ui.composer.value = "";
  autosize();
  updateSendButton();
  scrollToBottom();
  ui.composer.focus();
}

ui.stop.addEventListener("click", () => {
  sendControl({ action: "stopReply" });
  ui.stop.disabled = true; // until the reply's done frame
});

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
ui.composer.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});
ui.composer.addEventListener("input", () => {
  autosize();
  updateSendButton();
});
ui.newChat.addEventListener("click", () => {
  store.set(STORAGE.session, null);
  state.wantStrategy = ui.strategy.value || null;
  state.pending = null;
  clearMessages();
  setMemoryMode("full");
  restart();
  ui.composer.focus();
});
ui.deleteMyData.addEventListener("click", () => {
  if (state.socket?.readyState !== WebSocket.OPEN) {
    showSystem("error", "You are offline: reconnect, then delete your data.");
    return;
  }
  const sure = window.confirm(
    "Erase all your conversations and everything the assistant remembers about you? This cannot be undone.",
  );
  if (sure) state.socket.send(JSON.stringify({ action: "deleteMyData" }));
});
for (const chip of document.querySelectorAll(".suggestions .chip")) {
  chip.addEventListener("click", () => {
    ui.composer.value = chip.textContent.trim();
    autosize();
    updateSendButton();
    ui.composer.focus();
  });
}

function autosize() {
  ui.composer.style.height = "auto";
  ui.composer.style.height = `${Math.min(ui.composer.scrollHeight, Math.round(window.innerHeight * 0.4))}px`;
}

// ---- rendering -----------------------------------------------------------------------------

function clearMessages() {
  ui.messages.replaceChildren();
  ui.welcome.hidden = false;
}

function renderHistory(history) {
  const pending = state.pending;
  clearMessages();
  state.oldest = null;
  if (history.length) ui.welcome.hidden = true;
  ui.messages.append(...history.flatMap(historyNodes));
  if (pending) {
    // Not expected (getSession is only sent right after connecting) but never lose a live reply.
    ui.messages.append(pending.user, pending.bubble);
  }
  scrollToBottom();
}

/** The user's and the assistant's bubbles of a stored turn. A turn too large for one frame
 * comes cut short (`truncated` names the texts cut): they say so, and the whole turn is offered. */
function historyNodes(turn) {
  const at = typeof turn.at === "number" ? turn.at : null;
  const user = createMessage("user", String(turn.user ?? ""), { at, turn: turn.turn });
  let bubble;
  if (typeof turn.assistant === "string") {
    bubble = createMessage("assistant", turn.assistant, { turn: turn.turn, status: "done" });
  } else {
    bubble = createMessage("assistant", "", { turn: turn.turn });
    markFailed(bubble, "");
  }
  user.dataset.history = bubble.dataset.history = "true";
  const cut = Array.isArray(turn.truncated) ? turn.truncated : turn.truncated ? ["user", "assistant"] : [];
  if (cut.length) {
    for (const [name, item] of [["user", user], ["assistant", bubble]]) {
      item.dataset.truncated = "true";
      if (!cut.includes(name)) continue;
      const note = document.createElement("p");
      note.className = "cut-note";
      note.textContent = "… (only the beginning is shown)";
      item.querySelector(".bubble").append(note);
    }
    const show = document.createElement("button");
    show.type = "button";
    show.className = "show-full";
    show.dataset.testid = "show-full";
    show.textContent = "Show all of it";
    show.title = "This turn is long: only its beginning is shown";
    show.addEventListener("click", () => askWholeTurn(turn.turn, show));
    (cut.includes("user") ? user : bubble).querySelector(".bubble").append(show);
  }
  return [user, bubble];
}

function addMessage(role, text, options = {}) {
  ui.welcome.hidden = true;
  const item = createMessage(role, text, options);
  ui.messages.append(item);
  return item;
}

function createMessage(role, text, { at = null, turn = null, status = null } = {}) {
  const item = document.createElement("li");
  item.className = `message message-${role}`;
  item.dataset.testid = `message-${role}`;
  if (turn != null) item.dataset.turn = String(turn);
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  const label = document.createElement("span");
  label.className = "visually-hidden";
  label.textContent = role === "user" ? "You said:" : "Assistant:";
  const body = document.createElement("div");
  body.className = "text";
  bubble.append(label, body);
  if (role === "assistant") {
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    avatar.innerHTML = AVATAR_SVG; // a constant, never wire data
    item.append(avatar);
  }
  item.append(bubble);
  if (role === "user") {
    body.textContent = text;
    if (at) item.append(timeElement(at));
  } else if (status === "pending") {
    item.dataset.status = "pending";
    item.setAttribute("aria-busy", "true");
    body.append(typingDots());
  } else {
    item.dataset.status = status || "done";
    renderText(body, text);
  }
  return item;
}

function markFailed(item, partialText) {
  item.dataset.status = "failed";
  item.setAttribute("aria-busy", "false");
  const body = item.querySelector(".text");
  if (partialText) renderText(body, partialText);
  else body.replaceChildren();
  const note = document.createElement("p");
  note.className = "failed-note";
  note.textContent = partialText ? "The reply was cut off." : "No reply: this turn failed.";
  body.append(note);
}

function timeElement(at) {
  const date = new Date(at * 1000);
  const time = document.createElement("time");
  time.className = "meta";
  time.dateTime = date.toISOString();
  const sameDay = date.toDateString() === new Date().toDateString();
  time.textContent = sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  time.title = date.toLocaleString();
  return time;
}

function typingDots() {
  const dots = document.createElement("span");
  dots.className = "typing";
  dots.setAttribute("aria-label", "The assistant is thinking");
  for (let i = 0; i < 3; i += 1) dots.append(document.createElement("span"));
  return dots;
}

/** A notice, an error or a page message, inline in the conversation. */
function showSystem(kind, message, before = null, requestId = null) {
  ui.welcome.hidden = true;
  const item = document.createElement("li");
  item.className = `system system-${kind}`;
  item.dataset.testid = kind;
  item.setAttribute("role", kind === "error" ? "alert" : "status");
  const icon = document.createElement("span");
  icon.className = "system-icon";
  icon.setAttribute("aria-hidden", "true");
  icon.textContent = kind === "error" ? "!" : "i";
  const text = document.createElement("span");
  text.className = "system-text";
  text.textContent = message;
  item.append(icon, text);
  if (requestId) item.title = `Request id: ${requestId}`;
  const stick = nearBottom();
  if (before && before.parentNode === ui.messages) ui.messages.insertBefore(item, before);
  else ui.messages.append(item);
  if (stick) scrollToBottom();
  return item;
}

function setMemoryMode(mode) {
  if (typeof mode !== "string") return;
  state.memoryMode = mode;
  const known = MEMORY_LABELS[mode];
  ui.memory.hidden = mode === "full";
  ui.memory.dataset.mode = mode;
  const prefix = document.createElement("span");
  prefix.className = "badge-prefix";
  prefix.textContent = "Memory: ";
  ui.memory.replaceChildren(prefix, known ? known[0] : mode.replace(/_/g, " "));
  ui.memory.title = known ? known[1] : "";
}

// A small, safe Markdown subset for replies: code fences, lists, headings, **bold**, *italic*,
// `code`. Everything is built as DOM nodes from text: nothing from the wire becomes HTML.
function renderText(container, text) {
  const nodes = [];
  const parts = text.split(/^```[^\n]*\n?/m);
  parts.forEach((part, index) => {
    if (index % 2 === 1) {
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = part.replace(/\n$/, "");
      pre.append(code);
      nodes.push(pre);
    } else {
      nodes.push(...blocks(part));
    }
  });
  container.replaceChildren(...nodes);
}

function blocks(text) {
  const out = [];
  let list = null;
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) {
      const p = document.createElement("p");
      paragraph.forEach((line, i) => {
        if (i) p.append(document.createElement("br"));
        p.append(...inline(line));
      });
      out.push(p);
    }
    paragraph = [];
  };
  for (const line of text.split("\n")) {
    const bullet = /^\s*[-*•]\s+(.*)$/.exec(line);
    const numbered = /^\s*(\d+)[.)]\s+(.*)$/.exec(line);
    const heading = /^(#{1,4})\s+(.*)$/.exec(line);
    if (bullet || numbered) {
      flush();
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = document.createElement(tag);
        if (numbered) list.start = Number(numbered[1]);
        out.push(list);
      }
      const li = document.createElement("li");
      li.append(...inline(bullet ? bullet[1] : numbered[2]));
      list.append(li);
      continue;
    }
    list = null;
    if (heading) {
      flush();
      const h = document.createElement("p");
      h.className = "heading";
      h.append(...inline(heading[2]));
      out.push(h);
    } else if (!line.trim()) {
      flush();
    } else {
      paragraph.push(line);
    }
  }
  flush();
  return out;
}

function inline(text) {
  const nodes = [];
  const pattern = /(`[^`\n]+`|\*\*[^*\n]+\*\*|(?<![\w*])\*[^*\s][^*\n]*\*(?![\w*]))/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const token = match[0];
    let el;
    if (token.startsWith("`")) {
      el = document.createElement("code");
      el.textContent = token.slice(1, -1);
    } else if (token.startsWith("**")) {
      el = document.createElement("strong");
      el.textContent = token.slice(2, -2);
    } else {
      el = document.createElement("em");
      el.textContent = token.slice(1, -1);
    }
    nodes.push(el);
    last = match.index + token.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

// ---- screen readers ------------------------------------------------------------------------

function announce(text) {
  if (!text.trim()) return;
  const line = document.createElement("p");
  line.textContent = text;
  ui.live.append(line);
  while (ui.live.childElementCount > 6) ui.live.firstElementChild.remove();
}

/** Speak the reply's complete sentences as they arrive, and the rest when it is done. */
function announceReply(reply, finished) {
  const rest = reply.text.slice(reply.announced || 0);
  let end = rest.length;
  if (!finished) {
    const boundaries = [...rest.matchAll(/[.!?](?=\s)|\n/g)];
    if (!boundaries.length) return;
    const last = boundaries[boundaries.length - 1];
    end = last.index + last[0].length;
  }
  const sentence = rest.slice(0, end);
  reply.announced = (reply.announced || 0) + end;
  announce(sentence);
}

// ---- scrolling -----------------------------------------------------------------------------

function nearBottom() {
  const el = ui.conversation;
  return el.scrollHeight - el.scrollTop - el.clientHeight < STICK_TO_BOTTOM_PX;
}

function scrollToBottom() {
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}


// ---- start ---------------------------------------------------------------------------------

updateSendButton();
if (store.get(STORAGE.session)) ui.welcome.hidden = true; // the history is on its way
ui.composer.focus();
connect();
