"use strict";
// Secrets Vault console. Rules kept throughout this file:
// - text from the server is only ever put in the page with textContent (never innerHTML);
// - a secret value is read from its field once, sent with fetch, and the field is cleared;
//   nothing writes a value back into the page, storage or a URL;
// - every state-changing request carries the page's CSRF token (X-CSRF-Token).
(function () {
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const ROLE = document.querySelector('meta[name="vault-role"]').content;
  const CAN_WRITE = ROLE === "admin";
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, error) {
      super(error.message || ("HTTP " + status));
      this.status = status;
      this.code = error.status || "";
      const info = (error.details || [])[0] || {};
      this.reason = info.reason || "";
    }
  }

  let sessionEnded = false;

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
    const init = { method: method, headers: headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path.startsWith("/auth/") ? path : API + path, init);
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {}; }
    if (resp.status === 401) {
      if (!sessionEnded) {
        sessionEnded = true;
        location.assign("/login?ended=1");
      }
      throw new ApiError(401, (data && data.error) || {});
    }
    if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || {});
    return data;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function formatTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (isNaN(d.getTime())) return "–";
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC");
  }

  function showError(node, message) {
    node.textContent = message;
    node.hidden = false;
  }

  function clearErrors(ids) {
    ids.forEach((id) => { const n = $(id); if (n) { n.textContent = ""; n.hidden = true; } });
  }

  let toastTimer = 0;
  function toast(message) {
    const node = $("toast");
    node.textContent = message;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, 2500);
  }

  function globalError(err) {
    if (err instanceof ApiError && err.status === 401) return;
    showError($("global-error"), err.message || "Something went wrong.");
  }

  function debounce(fn, ms) {
    let timer = 0;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  // ------------------------------------------------------------------ tabs

  const loaders = {};
  document.querySelectorAll(".tab").forEach((tab) => {
    tab.addEventListener("click", () => {
      document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
      document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== "panel-" + tab.dataset.tab; });
      $("global-error").hidden = true;
      const load = loaders[tab.dataset.tab];
      if (load) load();
    });
  });

  // A list paged with opaque page tokens: a stack of the tokens of the pages seen so far.
  function pager(prevId, nextId, load) {
    const state = { tokens: [""], next: "" };
    $(prevId).addEventListener("click", () => {
      if (state.tokens.length > 1) { state.tokens.pop(); load(); }
    });
    $(nextId).addEventListener("click", () => {
      if (state.next) { state.tokens.push(state.next); load(); }
    });
    state.current = () => state.tokens[state.tokens.length - 1];
    state.reset = () => { state.tokens = [""]; state.next = ""; };
    state.update = (next) => {
      state.next = next || "";
      $(prevId).disabled = state.tokens.length <= 1;
      $(nextId).disabled = !state.next;
    };
    return state;
  }

  // --------------------------------------------------------------- secrets

  const secretsPage = pager("secrets-prev", "secrets-next", loadSecrets);
  let secretsSeq = 0;

  async function loadStats() {
    const stats = await api("GET", "/stats");
    $("stat-total").textContent = Number(stats.totalSecrets || 0).toLocaleString("en-US");
    $("stat-updated").textContent = formatTime(stats.lastUpdateTime);
  }

  async function loadSecrets() {
    const seq = ++secretsSeq;
    const params = new URLSearchParams({
      pageSize: $("page-size").value,
      nameContains: $("search").value.trim(),
    });
    if (secretsPage.current()) params.set("pageToken", secretsPage.current());
    try {
      const data = await api("GET", "/secrets?" + params.toString());
      if (seq !== secretsSeq) return; // a newer search answered first
      renderSecrets(data.secrets || []);
      const first = (secretsPage.tokens.length - 1) * Number($("page-size").value);
      const shown = (data.secrets || []).length;
      $("secrets-range").textContent = shown
        ? (first + 1) + "–" + (first + shown) + " of " + Number(data.totalSize || 0).toLocaleString("en-US")
        : "";
      secretsPage.update(data.nextPageToken);
    } catch (err) { globalError(err); }
  }

  function closeMenus() {
    document.querySelectorAll(".menu").forEach((m) => { m.hidden = true; });
  }
  document.addEventListener("click", (event) => {
    if (!event.target.closest(".actions")) closeMenus();
  });

  // Usage ("Last used", in-use warning on delete) is shown only when the server sends
  // Secret.usage (usage tracking); nothing is shown or guessed without it.
  function lastUsed(secret) {
    return secret.usage && secret.usage.lastResolveTime ? formatTime(secret.usage.lastResolveTime) : "never";
  }

  function renderSecrets(secrets) {
    const body = $("secrets-body");
    body.replaceChildren();
    const withUsage = secrets.some((s) => s.usage !== undefined);
    $("usage-header").hidden = !withUsage;
    $("secrets-empty").hidden = secrets.length > 0;
    for (const secret of secrets) {
      const row = el("tr");
      row.dataset.name = secret.name;
      row.append(el("td", secret.name, "name"), el("td", secret.description, "description"),
        el("td", formatTime(secret.createTime)), el("td", formatTime(secret.updateTime)));
      if (withUsage) row.append(el("td", lastUsed(secret)));
      const actions = el("td", null, "actions");
      const copy = el("button", "Copy {{secret:…}}", "link copy");
      copy.type = "button";
      copy.title = "Copy {{secret:" + secret.name + "}}";
      copy.addEventListener("click", () => copyReference(secret.name));
      actions.append(copy);
      if (CAN_WRITE) {
        const toggle = el("button", "Actions ▾", "link menu-toggle");
        toggle.type = "button";
        const menu = el("div", null, "menu");
        menu.hidden = true;
        const edit = el("button", "Edit", "menu-edit");
        edit.type = "button";
        edit.addEventListener("click", () => { closeMenus(); openSecretDialog(secret); });
        const del = el("button", "Delete", "menu-delete");
        del.type = "button";
        del.addEventListener("click", () => { closeMenus(); openDeleteDialog("secret", secret.name, secret); });
        menu.append(edit, del);
        toggle.addEventListener("click", () => { const open = menu.hidden; closeMenus(); menu.hidden = !open; });
        actions.append(toggle, menu);
      }
      row.append(actions);
      body.append(row);
    }
  }

  async function copyReference(name) {
    const text = "{{secret:" + name + "}}";
    try {
      await navigator.clipboard.writeText(text);
      toast("Copied " + text);
    } catch (e) {
      toast("Copy this: " + text);
    }
  }

  async function refreshSecrets() {
    $("global-error").hidden = true;
    await Promise.all([loadStats().catch(globalError), loadSecrets()]);
  }

  loaders.secrets = refreshSecrets;
  $("refresh").addEventListener("click", refreshSecrets);
  $("page-size").addEventListener("change", () => { secretsPage.reset(); loadSecrets(); });
  $("search").addEventListener("input", debounce(() => { secretsPage.reset(); loadSecrets(); }, 300));

  // ------------------------------------------------------ secret dialog

  const SECRET_FIELDS = {
    INVALID_NAME: "secret-name-error",
    ALREADY_EXISTS: "secret-name-error",
    NAME_RESERVED: "secret-name-error",
    SECRET_NOT_FOUND: "secret-name-error",
    INVALID_VALUE: "secret-value-error",
    VALUE_TOO_LARGE: "secret-value-error",
    DESCRIPTION_TOO_LONG: "secret-description-error",
    INVALID_DESCRIPTION: "secret-description-error",
  };
  const SECRET_ERRORS = ["secret-name-error", "secret-value-error", "secret-description-error", "secret-form-error"];
  let editing = null; // the secret being edited (null: creating)

  function secretMessage(err) {
    if (err.reason === "ALREADY_EXISTS") {
      return "A secret with this name already exists (names are unique ignoring case: "
        + "Stripe_Key and stripe_key are the same name). Pick another name.";
    }
    if (err.reason === "ETAG_MISMATCH") {
      return "Someone else changed this secret since you opened it. Close the dialog and try again.";
    }
    return err.message;
  }

  function updateCount() {
    $("secret-description-count").textContent = String($("secret-description").value.length);
  }

  function openSecretDialog(secret) {
    editing = secret || null;
    clearErrors(SECRET_ERRORS);
    $("secret-dialog-title").textContent = editing ? "Edit Secret" : "New Secret";
    $("secret-name").value = editing ? editing.name : "";
    $("secret-name").readOnly = Boolean(editing);
    $("secret-name-hint").hidden = Boolean(editing);
    $("secret-value").value = "";
    $("secret-value").placeholder = editing ? "Leave blank to keep the current value" : "";
    $("secret-value-hint").textContent = editing
      ? "Optional: leave blank to keep the current value, paste a new one to replace it."
      : "Never shown again after save.";
    $("secret-description").value = editing ? (editing.description || "") : "";
    updateCount();
    $("secret-dialog").showModal();
    (editing ? $("secret-value") : $("secret-name")).focus();
  }

  function closeSecretDialog() {
    $("secret-value").value = "";
    $("secret-dialog").close();
    editing = null;
  }

  async function saveSecret() {
    clearErrors(SECRET_ERRORS);
    const value = $("secret-value").value;
    // The value leaves the page with this request only; it is not kept anywhere.
    $("secret-value").value = "";
    const description = $("secret-description").value;
    const button = $("secret-save");
    button.disabled = true;
    try {
      if (editing) {
        const body = { description: description, etag: editing.etag };
        if (value !== "") body.value = value;
        await api("PATCH", "/secrets/" + encodeURIComponent(editing.name), body);
        toast("Saved " + editing.name);
      } else {
        const name = $("secret-name").value.trim();
        if (!name) {
          showError($("secret-name-error"), "Enter a name.");
          if (value) showError($("secret-value-error"), "For safety the value was cleared: paste it again.");
          return;
        }
        if (!value) {
          showError($("secret-value-error"), "Enter the value to store.");
          return;
        }
        await api("POST", "/secrets", { name: name, value: value, description: description });
        toast("Created " + name);
      }
      closeSecretDialog();
      await refreshSecrets();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      const field = SECRET_FIELDS[err.reason] || "secret-form-error";
      showError($(field), secretMessage(err));
      if (value && field !== "secret-value-error") {
        showError($("secret-value-error"), "For safety the value was cleared: paste it again.");
      }
    } finally {
      button.disabled = false;
    }
  }

  if (CAN_WRITE) {
    $("new-secret").addEventListener("click", () => openSecretDialog(null));
    $("secret-cancel").addEventListener("click", closeSecretDialog);
    $("secret-dialog").addEventListener("close", () => { $("secret-value").value = ""; });
    $("secret-save").addEventListener("click", saveSecret);
    $("secret-description").addEventListener("input", updateCount);
    ["secret-name", "secret-value"].forEach((id) => $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); saveSecret(); }
    }));
  }

  // ------------------------------------------------------- delete dialog

  let deleting = null; // {kind, name, item, force}

  function openDeleteDialog(kind, name, item) {
    deleting = { kind: kind, name: name, item: item, force: false };
    $("delete-ok").textContent = "Delete";
    $("delete-dialog-title").textContent = kind === "secret" ? "Delete secret" : "Delete config value";
    $("delete-reference").textContent = "{{" + kind + ":" + name + "}}";
    $("delete-name").textContent = name;
    $("delete-confirm").value = "";
    $("delete-ok").disabled = true;
    clearErrors(["delete-error"]);
    const usage = $("delete-usage");
    usage.replaceChildren();
    usage.hidden = true;
    if (item && item.usage && item.usage.lastResolveTime) {
      usage.append(el("p", "In use: last resolved " + formatTime(item.usage.lastResolveTime) + ".", "notice"));
      usage.hidden = false;
    }
    $("delete-dialog").showModal();
    $("delete-confirm").focus();
  }

  async function confirmDelete() {
    if (!deleting || $("delete-confirm").value !== deleting.name) return;
    const target = deleting;
    $("delete-ok").disabled = true;
    try {
      const query = new URLSearchParams();
      if (target.force) query.set("force", "true");
      if (target.kind === "secret") {
        if (target.item && target.item.etag) query.set("etag", target.item.etag);
        await api("DELETE", "/secrets/" + encodeURIComponent(target.name) + "?" + query);
      } else {
        await api("DELETE", "/configs/" + encodeURIComponent(target.name) + "?" + query);
      }
      $("delete-dialog").close();
      toast("Deleted " + target.name);
      if (target.kind === "secret") await refreshSecrets(); else await loadConfigs();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      showError($("delete-error"), err.message);
      // The delete guard: resolved recently. The message names the tools; a second,
      // deliberate click deletes anyway.
      if (err instanceof ApiError && (err.reason === "SECRET_IN_USE" || err.reason === "CONFIG_IN_USE")) {
        target.force = true;
        $("delete-ok").textContent = "Delete anyway";
      }
      $("delete-ok").disabled = false;
    }
  }

  if (CAN_WRITE) {
    $("delete-confirm").addEventListener("input", () => {
      $("delete-ok").disabled = !deleting || $("delete-confirm").value !== deleting.name;
    });
    $("delete-cancel").addEventListener("click", () => $("delete-dialog").close());
    $("delete-ok").addEventListener("click", confirmDelete);
  }

  // --------------------------------------------------------------- configs

  const configsPage = pager("configs-prev", "configs-next", loadConfigs);

  async function loadConfigs() {
    const params = new URLSearchParams({ pageSize: "100", keyContains: $("config-search").value.trim() });
    if (configsPage.current()) params.set("pageToken", configsPage.current());
    try {
      const data = await api("GET", "/configs?" + params.toString());
      const body = $("configs-body");
      body.replaceChildren();
      for (const config of data.configValues || []) {
        const row = el("tr");
        row.dataset.key = config.key;
        row.append(el("td", config.key), el("td", config.value), el("td", config.description),
          el("td", formatTime(config.updateTime)));
        const actions = el("td", null, "actions");
        if (CAN_WRITE) {
          const edit = el("button", "Edit", "link config-edit");
          edit.type = "button";
          edit.addEventListener("click", () => openConfigDialog(config));
          const del = el("button", "Delete", "link config-delete");
          del.type = "button";
          del.addEventListener("click", () => openDeleteDialog("config", config.key, config));
          actions.append(edit, del);
        }
        row.append(actions);
        body.append(row);
      }
      configsPage.update(data.nextPageToken);
    } catch (err) { globalError(err); }
  }

  loaders.configs = () => { configsPage.reset(); loadConfigs(); };
  $("config-refresh").addEventListener("click", loadConfigs);
  $("config-search").addEventListener("input", debounce(() => { configsPage.reset(); loadConfigs(); }, 300));

  const CONFIG_FIELDS = {
    INVALID_NAME: "config-key-error",
    INVALID_VALUE: "config-value-error",
    VALUE_TOO_LARGE: "config-value-error",
    DESCRIPTION_TOO_LONG: "config-description-error",
    INVALID_DESCRIPTION: "config-description-error",
  };
  const CONFIG_ERRORS = ["config-key-error", "config-value-error", "config-description-error", "config-form-error"];
  let editingConfig = null;

  function openConfigDialog(config) {
    editingConfig = config || null;
    clearErrors(CONFIG_ERRORS);
    $("config-dialog-title").textContent = config ? "Edit Config Value" : "New Config Value";
    $("config-key").value = config ? config.key : "";
    $("config-key").readOnly = Boolean(config);
    $("config-value").value = config ? config.value : "";
    $("config-description").value = config ? (config.description || "") : "";
    $("config-dialog").showModal();
  }

  async function saveConfig() {
    clearErrors(CONFIG_ERRORS);
    const key = $("config-key").value.trim();
    if (!key) { showError($("config-key-error"), "Enter a key."); return; }
    try {
      await api("PUT", "/configs/" + encodeURIComponent(key), {
        value: $("config-value").value, description: $("config-description").value,
      });
      $("config-dialog").close();
      toast("Saved " + key);
      await loadConfigs();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      showError($(CONFIG_FIELDS[err.reason] || "config-form-error"), err.message);
    }
  }

  if (CAN_WRITE) {
    $("new-config").addEventListener("click", () => openConfigDialog(null));
    $("config-cancel").addEventListener("click", () => $("config-dialog").close());
    $("config-save").addEventListener("click", saveConfig);
  }

  // ----------------------------------------------------------------- audit

  if (CAN_WRITE) {
    const auditPage = pager("audit-prev", "audit-next", loadAudit);

    async function loadAudit() {
      const params = new URLSearchParams({
        pageSize: "100",
        secretName: $("audit-secret").value.trim(),
        principal: $("audit-principal").value.trim(),
      });
      if (auditPage.current()) params.set("pageToken", auditPage.current());
      try {
        const data = await api("GET", "/audit?" + params.toString());
        const body = $("audit-body");
        body.replaceChildren();
        for (const event of data.events || []) {
          const row = el("tr");
          row.append(el("td", formatTime(event.time)), el("td", event.principal), el("td", event.method),
            el("td", event.outcome), el("td", (event.secretNames || []).join(", ")), el("td", event.tool, "tool"),
            el("td", event.requestId), el("td", event.peer));
          body.append(row);
        }
        auditPage.update(data.nextPageToken);
      } catch (err) { globalError(err); }
    }

    loaders.audit = () => { auditPage.reset(); loadAudit(); };
    $("audit-refresh").addEventListener("click", () => { auditPage.reset(); loadAudit(); });
    const reload = debounce(() => { auditPage.reset(); loadAudit(); }, 300);
    $("audit-secret").addEventListener("input", reload);
    $("audit-principal").addEventListener("input", reload);
  }

  // ------------------------------------------------------- template checker

  function checkerFields() {
    const fields = [];
    const url = $("check-url").value.trim();
    if (url) fields.push({ key: "url", template: url, encoding: "ENCODING_URL" });
    $("check-headers").value.split(/\r?\n/).forEach((line) => {
      if (!line.trim()) return;
      const colon = line.indexOf(":");
      const name = colon > 0 ? line.slice(0, colon).trim() : line.trim();
      const value = colon > 0 ? line.slice(colon + 1).trim() : "";
      fields.push({ key: "header:" + name, template: value, encoding: "ENCODING_HEADER" });
    });
    const body = $("check-body").value;
    if (body.trim()) fields.push({ key: "body", template: body, encoding: $("check-body-encoding").value });
    return fields;
  }

  async function runCheck() {
    clearErrors(["check-error"]);
    $("check-result").hidden = true;
    const fields = checkerFields();
    if (!fields.length) { showError($("check-error"), "Paste a URL, a header or a body first."); return; }
    try {
      const data = await api("POST", "/check", { fields: fields });
      const refs = $("check-references").tBodies[0];
      refs.replaceChildren();
      for (const r of data.references || []) {
        const row = el("tr");
        row.append(el("td", r.key), el("td", (r.secretNames || []).join(", ")),
          el("td", (r.configKeys || []).join(", ")), el("td", (r.inputNames || []).join(", ")));
        refs.append(row);
      }
      const problems = $("check-problems").tBodies[0];
      problems.replaceChildren();
      for (const p of data.problems || []) {
        const row = el("tr");
        row.append(el("td", p.fieldKey), el("td", String(p.kind || "").replace("PROBLEM_KIND_", "")),
          el("td", p.placeholder), el("td", p.message), el("td", (p.suggestions || []).join(", ")));
        problems.append(row);
      }
      $("check-no-problems").hidden = (data.problems || []).length > 0;
      $("check-problems").hidden = (data.problems || []).length === 0;
      $("check-result").hidden = false;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      showError($("check-error"), err.message);
    }
  }

  $("check-run").addEventListener("click", runCheck);

  // ---------------------------------------------------------------- sign out

  $("sign-out").addEventListener("click", async () => {
    try { await api("POST", "/auth/signout"); } catch (e) { /* leave anyway */ }
    location.assign("/login");
  });

  refreshSecrets();
})();
