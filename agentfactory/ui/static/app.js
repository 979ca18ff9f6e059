/* agentfactory dashboard: the live parts of server-rendered pages. Vanilla JS, no build step, no
   dependencies; loaded from /ui/static under a strict CSP (no inline script anywhere).
   - agents list: status changes and new agents from /events (the session cookie authenticates it)
   - agent page: the log tail from /agents/{id}/stream in a windowed view (bounded DOM and memory),
     Cancel and Extend TTL through the HTTP API with the session's CSRF header
   - keys page: create (the new key shown once) and revoke */
"use strict";

(function () {
  const csrf = document.body.dataset.csrf || "";

  function notice(message, isError) {
    const el = document.getElementById("notice");
    if (!el) return;
    el.textContent = message;
    el.className = "notice" + (isError ? " notice-error" : "") + (message ? " shown" : "");
  }

  async function api(method, url, body) {
    const headers = { "X-CSRF-Token": csrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let doc = null;
    try { doc = await response.json(); } catch (e) { doc = null; }
    if (!response.ok) {
      const message = doc && doc.error ? doc.error.message : "HTTP " + response.status;
      if (response.status === 401) window.location.assign("/ui/login?next=" + encodeURIComponent(location.pathname));
      throw new Error(message);
    }
    return doc;
  }

  /* ANSI escape sequences (CSI, OSC, two-byte) and other control characters but tab, removed.
     Text is only ever set with textContent, so nothing in a line is interpreted as HTML. */
  // eslint-disable-next-line no-control-regex
  const CONTROL = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]/g;
  function clean(text) { return text.indexOf("\x1b") < 0 && !/[\x00-\x08\x0b-\x1f\x7f]/.test(text) ? text : text.replace(CONTROL, ""); }

  function setStatusBadge(el, status) {
    el.textContent = status;
    el.className = el.className.replace(/\bs-[a-z]+\b/g, "").trim() + " s-" + status;
  }

  /* ---------------------------------------------------------------- agents list */

  const MAX_LIST_ROWS = 200;

  function initList(table) {
    const filter = JSON.parse(table.dataset.filter || "{}");
    const live = table.dataset.live === "yes";
    const tbody = table.tBodies[0];
    const state = document.getElementById("live-state");
    const after = table.dataset.eventsAfter;
    const source = new EventSource("/events" + (after ? "?after=" + encodeURIComponent(after) : ""));
    source.onopen = function () { state.textContent = "Live updates: on"; state.dataset.state = "on"; };
    source.onerror = function () {
      const closed = source.readyState === EventSource.CLOSED;
      state.textContent = closed ? "Live updates: stopped (reload, or sign in again)" : "Live updates: reconnecting…";
      state.dataset.state = closed ? "stopped" : "reconnecting";
    };
    function matches(a) {
      if (filter.status && a.status !== filter.status) return false;
      if (filter.model && a.model !== filter.model) return false;
      const meta = filter.meta || {};
      for (const k of Object.keys(meta)) {
        if (!(k in a.metadata) || a.metadata[k] === null || String(a.metadata[k]) !== meta[k]) return false;
      }
      return true;
    }
    function cell(tr, text, cls) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      if (text !== undefined) td.textContent = text;
      tr.appendChild(td);
      return td;
    }
    function newRow(a) {
      const tr = document.createElement("tr");
      tr.dataset.agentId = a.id;
      const link = document.createElement("a");
      link.href = a.links.dashboard;
      link.textContent = a.id;
      cell(tr).appendChild(link);
      const status = document.createElement("span");
      status.className = "status";
      status.dataset.field = "status";
      setStatusBadge(status, a.status);
      cell(tr).appendChild(status);
      cell(tr, a.model);
      const time = document.createElement("time");
      time.dateTime = a.created_at;
      time.textContent = a.created_at.slice(0, 19).replace("T", " ");
      cell(tr).appendChild(time);
      cell(tr, a.queue_position == null ? "" : String(a.queue_position)).dataset.field = "queue";
      const meta = cell(tr, undefined, "meta");
      for (const k of Object.keys(a.metadata)) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = k + "=" + a.metadata[k];
        meta.appendChild(tag);
        meta.appendChild(document.createTextNode(" "));
      }
      return tr;
    }
    function onAgent(a) {
      const row = tbody.querySelector('tr[data-agent-id="' + CSS.escape(a.id) + '"]');
      if (row) {
        setStatusBadge(row.querySelector('[data-field="status"]'), a.status);
        const queue = row.querySelector('[data-field="queue"]');
        if (queue) queue.textContent = a.queue_position == null ? "" : String(a.queue_position);
      } else if (live && matches(a)) {
        tbody.insertBefore(newRow(a), tbody.firstChild);
        while (tbody.rows.length > MAX_LIST_ROWS) tbody.deleteRow(-1);  // a bounded page, however busy
        const empty = document.getElementById("empty");
        if (empty) empty.remove();
      }
    }
    ["agent.queued", "agent.started", "agent.finished", "agent.artifacts_ready"].forEach(function (type) {
      source.addEventListener(type, function (ev) { onAgent(JSON.parse(ev.data).agent); });
    });
  }

  /* ---------------------------------------------------------------- the log view */

  // The memory bound (README, docs/dashboard.md): at most MAX_LINES lines and MAX_CHARS characters
  // are kept (the oldest go first), each line cut at MAX_LINE_CHARS; the DOM holds only the rows in
  // sight plus OVERSCAN on each side, whatever the log's size.
  const MAX_LINES = 50000;
  const MAX_CHARS = 8000000;
  const MAX_LINE_CHARS = 4000;
  const OVERSCAN = 30;
  const INITIAL_TAIL = 50000;

  function LogView(el) {
    this.el = el;
    this.sizer = el.querySelector(".log-sizer");
    this.rows = el.querySelector(".log-rows");
    this.seq = [];
    this.text = [];
    this.err = [];
    this.chars = 0;
    this.dropped = 0;
    this.follow = true;
    this.scheduled = false;
    this.programmatic = false;
    this.count = document.getElementById("log-count");
    const probe = document.createElement("div");
    probe.className = "ln";
    probe.textContent = "x";
    this.rows.appendChild(probe);
    this.lh = probe.getBoundingClientRect().height || 18;
    this.rows.removeChild(probe);
    const self = this;
    el.addEventListener("scroll", function () {
      if (!self.programmatic) self.follow = self.atEnd();
      self.programmatic = false;
      self.schedule();
    }, { passive: true });
    el.addEventListener("keydown", function (ev) {
      if (ev.key === "End") { ev.preventDefault(); self.toEnd(); }
      if (ev.key === "Home") { ev.preventDefault(); self.follow = false; self.el.scrollTop = 0; }
    });
  }
  LogView.prototype.atEnd = function () {
    return this.el.scrollTop + this.el.clientHeight >= this.el.scrollHeight - 2 * this.lh;
  };
  LogView.prototype.push = function (line) {
    let text = clean(line.text);
    if (text.length > MAX_LINE_CHARS) text = text.slice(0, MAX_LINE_CHARS) + " …[cut]";
    this.seq.push(line.seq);
    this.text.push(text);
    this.err.push(line.stream === "stderr");
    this.chars += text.length;
    if (this.text.length > MAX_LINES * 1.1 || this.chars > MAX_CHARS) this.trim();
    this.schedule();
  };
  LogView.prototype.trim = function () {
    let drop = Math.max(0, this.text.length - MAX_LINES);
    let chars = this.chars;
    for (let i = 0; i < drop; i++) chars -= this.text[i].length;
    while (chars > MAX_CHARS * 0.9 && drop < this.text.length) { chars -= this.text[drop].length; drop++; }
    this.seq.splice(0, drop);
    this.text.splice(0, drop);
    this.err.splice(0, drop);
    this.chars = chars;
    this.dropped += drop;
  };
  LogView.prototype.toEnd = function () { this.follow = true; this.render(); };
  LogView.prototype.schedule = function () {
    if (this.scheduled) return;
    this.scheduled = true;
    const self = this;
    window.requestAnimationFrame(function () { self.scheduled = false; self.render(); });
  };
  LogView.prototype.render = function () {
    const n = this.text.length;
    const height = n * this.lh;
    this.sizer.style.height = height + "px";
    if (this.follow && this.el.scrollTop < height - this.el.clientHeight) {
      this.programmatic = true;
      this.el.scrollTop = height;
    }
    const first = Math.max(0, Math.floor(this.el.scrollTop / this.lh) - OVERSCAN);
    const last = Math.min(n, Math.ceil((this.el.scrollTop + this.el.clientHeight) / this.lh) + OVERSCAN);
    this.rows.style.transform = "translateY(" + first * this.lh + "px)";
    const want = Math.max(0, last - first);
    while (this.rows.childElementCount > want) this.rows.removeChild(this.rows.lastChild);
    while (this.rows.childElementCount < want) {
      const row = document.createElement("div");
      const seq = document.createElement("span");
      seq.className = "seq";
      seq.setAttribute("aria-hidden", "true");
      const text = document.createElement("span");
      text.className = "tx";
      row.appendChild(seq);
      row.appendChild(text);
      this.rows.appendChild(row);
    }
    let row = this.rows.firstElementChild;
    for (let i = first; i < last; i++, row = row.nextElementSibling) {
      const err = this.err[i];
      row.className = err ? "ln err" : "ln";
      row.dataset.seq = this.seq[i];
      row.firstChild.textContent = this.seq[i];
      row.lastChild.textContent = this.text[i];
    }
    this.count.textContent = n + " lines" + (this.dropped ? " (" + this.dropped + " earlier lines not kept here)" : "");
    this.el.dataset.lines = String(n);
    this.el.dataset.lastSeq = n ? String(this.seq[n - 1]) : "0";
  };

  /* ---------------------------------------------------------------- agent page */

  function initAgent(section) {
    const id = section.dataset.agentId;
    const logEl = document.getElementById("log");
    const view = new LogView(logEl);
    const state = document.getElementById("log-state");
    const actions = document.getElementById("actions");
    document.getElementById("log-end").addEventListener("click", function () { view.toEnd(); logEl.focus(); });
    window.addEventListener("resize", function () { view.schedule(); });

    function show(a) {
      setStatusBadge(document.getElementById("status"), a.status);
      const set = function (elId, value) { const el = document.getElementById(elId); if (el) el.textContent = value == null ? "—" : String(value); };
      set("reason", a.reason);
      set("exit-code", a.exit_code);
      set("error", a.error);
      set("started", a.started_at);
      set("finished", a.finished_at);
      set("expires", a.expires_at);
      const terminal = ["succeeded", "failed", "cancelled", "expired"].indexOf(a.status) >= 0;
      actions.hidden = terminal;
      section.dataset.terminal = terminal ? "yes" : "no";
    }
    async function refreshResult() {
      try {
        const r = await api("GET", "/agents/" + encodeURIComponent(id) + "/result");
        const set = function (elId, value) { document.getElementById(elId).textContent = value == null ? "—" : String(value); };
        set("seal-lines", r.seal.log_lines);
        set("seal-bytes", r.seal.log_bytes);
        set("seal-sha256", r.seal.log_sha256);
        set("seal-dropped", r.seal.dropped_lines + " lines, " + r.seal.dropped_bytes + " bytes");
        set("seal-capture", r.seal.capture_complete ? "complete" : "incomplete: " + (r.seal.capture_error || ""));
        set("first-output", r.timings.first_output_at);
        set("durations", (r.timings.launch_seconds == null ? "—" : r.timings.launch_seconds) + " s / " +
          (r.timings.run_seconds == null ? "—" : r.timings.run_seconds) + " s");
        document.getElementById("result").textContent = JSON.stringify(r, null, 2);
      } catch (e) { notice("could not read the result: " + e.message, true); }
    }

    const source = new EventSource(logEl.dataset.stream + "?tail=" + INITIAL_TAIL);
    source.onopen = function () { state.textContent = "live"; state.dataset.state = "live"; };
    source.addEventListener("log", function (ev) { view.push(JSON.parse(ev.data)); });
    source.addEventListener("status", function (ev) { show(JSON.parse(ev.data)); });
    source.addEventListener("end", function (ev) {
      show(JSON.parse(ev.data));
      source.close();
      state.textContent = "ended";
      state.dataset.state = "ended";
      refreshResult();
    });
    source.addEventListener("error", function (ev) {
      if (ev.data) {  // the server's own `error` event: the session ended or the key was revoked
        let message = "the stream ended";
        try { message = JSON.parse(ev.data).error.message; } catch (e) { /* keep the default */ }
        source.close();
        state.textContent = "stopped: " + message;
        state.dataset.state = "stopped";
      } else if (source.readyState === EventSource.CLOSED) {
        state.textContent = "stopped (reload, or sign in again)";
        state.dataset.state = "stopped";
      } else {
        state.textContent = "reconnecting…";
        state.dataset.state = "reconnecting";
      }
    });

    document.getElementById("cancel").addEventListener("click", async function () {
      this.disabled = true;
      try { show(await api("DELETE", "/agents/" + encodeURIComponent(id))); notice("cancelled"); }
      catch (e) { notice("cancel refused: " + e.message, true); }
      finally { this.disabled = false; }
    });
    document.getElementById("extend").addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const ttl = parseInt(document.getElementById("ttl").value, 10);
      try { show(await api("POST", "/agents/" + encodeURIComponent(id) + "/ttl", { ttl_seconds: ttl })); notice("TTL extended"); }
      catch (e) { notice("extend refused: " + e.message, true); }
    });
  }

  /* ---------------------------------------------------------------- keys page */

  function initKeys(form) {
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const body = {
        name: document.getElementById("k-name").value,
        admin: document.getElementById("k-admin").checked,
        max_concurrent_agents: parseInt(document.getElementById("k-concurrent").value, 10) || 5,
      };
      try {
        const made = await api("POST", "/keys", body);
        document.getElementById("created-key").textContent = made.key;
        document.getElementById("created").hidden = false;
        const tr = document.createElement("tr");
        tr.dataset.keyId = made.id;
        [made.name, made.id, made.prefix, made.admin ? "yes" : "no", made.created_at.slice(0, 19).replace("T", " "), "active", ""]
          .forEach(function (t) { const td = document.createElement("td"); td.textContent = t; tr.appendChild(td); });
        document.querySelector("#keys tbody").appendChild(tr);
      } catch (e) { notice("create refused: " + e.message, true); }
    });
    document.querySelectorAll("button.revoke").forEach(function (button) {
      button.addEventListener("click", async function () {
        if (button.dataset.confirm !== "yes") {  // two steps, no modal: the first click asks
          button.dataset.confirm = "yes";
          button.textContent = "Confirm revoke";
          return;
        }
        try {
          const k = await api("DELETE", "/keys/" + encodeURIComponent(button.dataset.keyId));
          button.closest("tr").querySelector('[data-field="state"]').textContent = "revoked " + (k.revoked_at || "").slice(0, 19);
          button.remove();
        } catch (e) { notice("revoke refused: " + e.message, true); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const table = document.getElementById("agents");
    if (table) initList(table);
    const agent = document.getElementById("agent");
    if (agent) initAgent(agent);
    const keys = document.getElementById("new-key");
    if (keys) initKeys(keys);
  });
})();
