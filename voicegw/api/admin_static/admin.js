// voicegw tenant admin page: a thin client of the admin API (/api/v1). The token
// stays in this tab's sessionStorage only.
"use strict";
const $ = (sel) => document.querySelector(sel);
const api = async (method, path, body) => {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem("vgw-token")}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json();
  if (!res.ok) throw Object.assign(new Error(data.error.message), data.error, { status: res.status });
  return data;
};
const LISTS = new Set(["all_party_consent_jurisdictions", "approved_subprocessors"]);
const get = (obj, path) => path.split(".").reduce((o, k) => (o == null ? o : o[k]), obj);
const set = (obj, path, value) => {
  const keys = path.split(".");
  let node = obj;
  for (const k of keys.slice(0, -1)) node = node[k] ??= {};
  node[keys.at(-1)] = value;
};

function fill(settings) {
  for (const el of $("#settings").elements) {
    if (!el.name) continue;
    const value = get(settings, el.name);
    if (el.type === "checkbox") el.checked = Boolean(value);
    else if (LISTS.has(el.name)) el.value = (value || []).join(", ");
    else el.value = value ?? "";
  }
  $("#region").textContent = `region: ${settings.region}`;
}

function collect() {
  const patch = {};
  for (const el of $("#settings").elements) {
    if (!el.name) continue;
    let value = el.type === "checkbox" ? el.checked : el.value;
    if (LISTS.has(el.name)) value = value.split(",").map((s) => s.trim()).filter(Boolean);
    else if (el.type === "number") value = Number(value);
    else if (value === "" && el.type !== "checkbox") value = null;
    set(patch, el.name, value);
  }
  return patch;
}

async function loadTenant() {
  const id = $("#tenant").value;
  fill(await api("GET", `/tenants/${id}/settings`));
  const { events } = await api("GET", `/tenants/${id}/audit?limit=50`).catch(() => ({ events: [] }));
  $("#audit tbody").replaceChildren(...events.reverse().map((e) => {
    const tr = document.createElement("tr");
    for (const v of [e.seq, e.time, e.actor, e.action, e.target]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  }));
}

async function start() {
  const { tenants } = await api("GET", "/tenants");
  $("#tenant").replaceChildren(...tenants.map((t) => new Option(`${t.name} (${t.id})`, t.id)));
  $("#app").hidden = false;
  $("#signout").hidden = false;
  $("#token").closest("label").hidden = true;
  $("#signin button[type=submit]").hidden = true;
  await loadTenant();
}

$("#signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("vgw-token", $("#token").value.trim());
  $("#token").value = "";
  try { await start(); } catch (err) { alert(err.message); }
});
$("#signout").addEventListener("click", () => { sessionStorage.removeItem("vgw-token"); location.reload(); });
$("#tenant").addEventListener("change", loadTenant);
$("#settings").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  for (const el of document.querySelectorAll(".invalid")) el.classList.remove("invalid");
  const status = $("#status");
  try {
    fill(await api("PATCH", `/tenants/${$("#tenant").value}/settings`, collect()));
    status.className = "";
    status.textContent = "saved";
    await loadTenant();
  } catch (err) {
    status.className = "error";
    status.textContent = err.message;
    const field = (err.field || "").replace(/^settings\./, "");
    const el = $("#settings").elements.namedItem(field) || $("#settings").elements.namedItem(field.split(".").slice(0, 2).join("."));
    if (el) el.classList.add("invalid");
  }
});
$("#prompt-upload").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file) return;
  const name = file.name.replace(/[^A-Za-z0-9._-]/g, "_");
  const res = await fetch(`/api/v1/tenants/${$("#tenant").value}/prompts/${name}`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${sessionStorage.getItem("vgw-token")}`, "Content-Type": "audio/wav" },
    body: file,
  });
  const data = await res.json();
  $("#status").className = res.ok ? "" : "error";
  $("#status").textContent = res.ok ? `uploaded ${data.name} (${data.duration_seconds} s)` : data.error.message;
  if (res.ok) $("#settings").elements.namedItem("consent_prompt.audio_file").value = data.name;
});
if (sessionStorage.getItem("vgw-token")) start().catch(() => sessionStorage.removeItem("vgw-token"));
