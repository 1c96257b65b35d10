// The wxpipe console: plain JavaScript, no build step, no external resource. Every value from
// the server reaches the page through textContent (never as HTML). The admin token is kept in
// this tab's sessionStorage and sent as a bearer header; it never appears in a URL.
"use strict";

const TEXT = {
  "zh-CN": {
    console: "运维控制台", tab_accounts: "授权账号", tab_platform: "平台状态", tab_authorize: "授权链接",
    tab_dead: "死信", tab_traffic: "流量", logout: "退出", login_title: "管理令牌",
    login_help: "请输入管理 API 的 Bearer 令牌（WXPIPE_ADMIN_TOKEN），仅保存在当前标签页。", login: "登录",
    login_wrong: "令牌不正确。", search_ph: "appid、名称或原始 ID", all_statuses: "全部状态", search: "搜索",
    name: "名称", type: "类型", status: "状态", token_expiry: "令牌到期", last_refresh: "上次刷新", last_error: "最近错误",
    wechat_errors: "微信接口错误（最近 15 分钟）", errcode: "错误码", count: "数量", quota: "调用额度",
    auth_help: "把此链接发给公众号或小程序的管理员；在手机上可用微信扫描二维码。",
    refresh: "刷新", source: "来源队列", reason: "原因", oldest: "最早", detail: "详情", replay: "重放",
    since_ph: "时间范围，如 2h", limit: "最多条数", dry_run: "仅预览", show_letter: "查看单条", show: "查看",
    purge: "清空", purge_all: "删除全部死信…", pushes_s: "推送/秒", events_s: "事件/秒", refused_s: "拒绝/秒",
    publish_p99: "投递确认 p99（毫秒）", refusals: "拒绝原因（15 分钟）", processes: "进程", role: "角色",
    seen: "最近上报", up: "运行时长", refresh_now: "立即刷新令牌", invalidate: "作废当前令牌",
    permissions: "权限集", next_refresh: "下次刷新", jsapi_ticket: "JS-SDK 票据到期", wx_card_ticket: "卡券票据到期",
    next_ticket: "下次取票", age_unknown: "签发时间未知，每分钟核对", failed_attempts: "连续失败", authorized_at: "授权时间",
    refreshes: "刷新次数", service_type: "账号类型 ID", verify_type: "认证类型 ID", principal: "主体",
    ticket: "ticket", ticket_age: "ticket 年龄", component_token: "component_access_token 剩余",
    failures: "连续失败", none: "无", no_letters: "没有死信。", letters: "条死信", confirm_purge: "确定删除全部 {n} 条死信？此操作不可恢复。",
    confirm_invalidate: "作废 {appid} 的当前令牌并立即换新？", done: "完成", page: "第 {p} / {n} 页",
    accounts_summary: "共 {total} 个，匹配 {matching} 个", pushes_total: "已接收推送", events_total: "已发布事件",
    live_processes: "在线进程", official_account: "公众号", mini_program: "小程序", unknown: "未知",
    quota_ok: "没有用尽的额度。", closed_until: "关闭至", replay_this: "重放此类",
    tab_releases: "代码发布", rel_new: "新建发布", rel_template: "代码模板", rel_version: "版本号", rel_version_ph: "如 1.2.0",
    rel_desc: "版本描述", rel_targets: "发布范围", rel_all_minis: "所有已授权代码管理的小程序", rel_listed: "指定 appid",
    rel_appids: "appid 列表", rel_appids_ph: "每行或以逗号分隔一个 appid", rel_mode: "发布方式", rel_auto: "审核通过后自动发布",
    rel_manual: "审核通过后手动发布", rel_gray: "先灰度、再全量", rel_gray_steps: "灰度比例（%）", rel_gray_ph: "如 10,50",
    rel_concurrency: "同时处理账号数", rel_stop: "失败比例超过（%）时暂停", rel_ext: "ext_json", rel_ext_ph: "{\"extAppid\": \"${appid}\"}",
    rel_create: "创建发布", rel_progress: "进度", rel_rate: "账号/分钟", rel_eta: "预计剩余", rel_created: "创建时间",
    rel_pause: "暂停", rel_resume: "继续", rel_retry: "重试失败账号", rel_rollback: "回退已发布版本", rel_cancel: "取消发布",
    rel_release: "立即发布", rel_failures: "失败账号", rel_skipped: "跳过的账号", rel_waiting: "等待审核额度的账号",
    rel_screenshots: "截图", rel_none: "还没有发布任务。", rel_quota: "本月审核额度：剩余 {rest} / {limit}",
    rel_confirm_cancel: "取消后，尚未提交审核的账号不再继续；审核中的将撤回（每个小程序每天 5 次、每月 10 次），撤回不会退还已用的审核额度。确定取消？",
    rel_confirm_rollback: "把本任务已发布的账号回退到上一个线上版本（首次发布的账号无法回退）？",
    rel_created_ok: "已创建发布任务 {id}", rel_bad_ext: "ext_json 不是 JSON 对象",
    running: "进行中", paused: "已暂停", cancelling: "取消中", cancelled: "已取消", finished: "已完成",
    st_pending: "待处理", st_committed: "已上传代码", st_waiting_quota: "等待审核额度", st_audit_submitted: "审核中",
    st_audit_delayed: "审核延期", st_audit_passed: "审核通过", st_audit_failed: "审核未通过", st_gray_released: "灰度中",
    st_released: "已发布", st_release_failed: "发布失败", st_rolling_back: "回退中", st_rolled_back: "已回退",
    st_rollback_failed: "回退失败", st_undoing_audit: "撤回审核中", st_skipped: "已跳过", st_cancelled: "已取消",
  },
  en: {
    console: "console", tab_accounts: "Accounts", tab_platform: "Platform", tab_authorize: "Authorization",
    tab_dead: "Dead letters", tab_traffic: "Traffic", logout: "Log out", login_title: "Admin token",
    login_help: "Enter the admin API's bearer token (WXPIPE_ADMIN_TOKEN). It is kept in this tab only.", login: "Log in",
    login_wrong: "Wrong token.", search_ph: "appid, name or gh_ id", all_statuses: "All statuses", search: "Search",
    name: "Name", type: "Type", status: "Status", token_expiry: "Token expires", last_refresh: "Last refresh", last_error: "Last error",
    wechat_errors: "WeChat errors (last 15 minutes)", errcode: "errcode", count: "Count", quota: "Quota",
    auth_help: "Send this link to an account's administrator; on a phone, let them scan the code in WeChat.",
    refresh: "Refresh", source: "Source queue", reason: "Reason", oldest: "Oldest", detail: "Detail", replay: "Replay",
    since_ph: "since, e.g. 2h", limit: "limit", dry_run: "dry run", show_letter: "Show a letter", show: "Show",
    purge: "Purge", purge_all: "Delete every dead letter…", pushes_s: "Pushes/s", events_s: "Events/s", refused_s: "Refused/s",
    publish_p99: "Publish confirm p99 (ms)", refusals: "Refusals by reason (15 min)", processes: "Processes", role: "Role",
    seen: "Last seen", up: "Up", refresh_now: "Refresh token now", invalidate: "Invalidate token",
    permissions: "Permission sets", next_refresh: "Next refresh", jsapi_ticket: "jsapi_ticket expires", wx_card_ticket: "wx_card ticket expires",
    next_ticket: "Next ticket fetch", age_unknown: "age unknown, checked every minute", failed_attempts: "Failed attempts", authorized_at: "Authorized",
    refreshes: "Refreshes", service_type: "Service type id", verify_type: "Verify type id", principal: "Principal",
    ticket: "ticket", ticket_age: "Ticket age", component_token: "component_access_token left",
    failures: "Consecutive failures", none: "none", no_letters: "No dead letters.", letters: "dead letters",
    confirm_purge: "Delete all {n} dead letters? This cannot be undone.",
    confirm_invalidate: "Invalidate the current token of {appid} and get a new one now?", done: "Done", page: "page {p} of {n}",
    accounts_summary: "{total} in all, {matching} matching", pushes_total: "Pushes accepted", events_total: "Events published",
    live_processes: "Live processes", official_account: "official account", mini_program: "mini program", unknown: "unknown",
    quota_ok: "No quota is used up.", closed_until: "closed until", replay_this: "Replay these",
    tab_releases: "Releases", rel_new: "New release", rel_template: "Template", rel_version: "Version", rel_version_ph: "e.g. 1.2.0",
    rel_desc: "Description", rel_targets: "Accounts", rel_all_minis: "Every mini program that granted code management", rel_listed: "These appids",
    rel_appids: "appids", rel_appids_ph: "one appid per line or comma-separated", rel_mode: "Release", rel_auto: "As soon as the audit passes",
    rel_manual: "By hand, after the audit", rel_gray: "Gray steps, then everyone", rel_gray_steps: "Gray steps (%)", rel_gray_ph: "e.g. 10,50",
    rel_concurrency: "Accounts at once", rel_stop: "Pause when failures exceed (%)", rel_ext: "ext_json", rel_ext_ph: "{\"extAppid\": \"${appid}\"}",
    rel_create: "Create", rel_progress: "Progress", rel_rate: "Accounts/min", rel_eta: "ETA", rel_created: "Created",
    rel_pause: "Pause", rel_resume: "Resume", rel_retry: "Retry failed accounts", rel_rollback: "Roll back released accounts", rel_cancel: "Cancel",
    rel_release: "Release now", rel_failures: "Failed accounts", rel_skipped: "Skipped accounts", rel_waiting: "Waiting for audit quota",
    rel_screenshots: "Screenshots", rel_none: "No release jobs yet.", rel_quota: "Audit quota this month: {rest} of {limit} left",
    rel_confirm_cancel: "Accounts not yet submitted for audit stop; audits in review are undone (5 a day, 10 a month per mini program), and undoing one does not return the audit quota it used. Cancel?",
    rel_confirm_rollback: "Roll the released accounts of this job back to the version online before it (not possible for a first release)?",
    rel_created_ok: "Release job {id} created", rel_bad_ext: "ext_json is not a JSON object",
    running: "running", paused: "paused", cancelling: "cancelling", cancelled: "cancelled", finished: "finished",
    st_pending: "pending", st_committed: "committed", st_waiting_quota: "waiting for quota", st_audit_submitted: "in review",
    st_audit_delayed: "review delayed", st_audit_passed: "audit passed", st_audit_failed: "audit failed", st_gray_released: "gray",
    st_released: "released", st_release_failed: "release failed", st_rolling_back: "rolling back", st_rolled_back: "rolled back",
    st_rollback_failed: "rollback failed", st_undoing_audit: "undoing audit", st_skipped: "skipped", st_cancelled: "cancelled",
  },
};

let lang = localStorage.getItem("wxpipe-console-lang") ||
  ((navigator.language || "zh-CN").toLowerCase().startsWith("zh") ? "zh-CN" : "en");
const t = (k, vars) => {
  let s = (TEXT[lang] && TEXT[lang][k]) || TEXT.en[k] || k;
  for (const [name, v] of Object.entries(vars || {})) s = s.replace("{" + name + "}", String(v));
  return s;
};
const $ = (sel) => document.querySelector(sel);
const el = (tag, text, cls) => {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
};

function applyLanguage() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-t]").forEach((e) => { e.textContent = t(e.dataset.t); });
  document.querySelectorAll("[data-ph]").forEach((e) => { e.placeholder = t(e.dataset.ph); });
  $("#lang").textContent = lang === "en" ? "中文" : "English";
}

// ---- the API -------------------------------------------------------------------------------
const token = () => sessionStorage.getItem("wxpipe-admin-token") || "";

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  opts.headers.Authorization = "Bearer " + token();
  if (opts.body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { logout(t("login_wrong")); throw new Error(t("login_wrong")); }
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new Error((body && body.error) || ("HTTP " + r.status));
  return body;
}

function toast(msg) {
  const e = $("#toast");
  e.textContent = msg;
  e.classList.add("show");
  setTimeout(() => e.classList.remove("show"), 3000);
}

const when = (ms) => (ms && ms > 0 ? new Date(ms).toLocaleString(lang) : "—");
const whenSecs = (s) => (s ? when(s * 1000) : "—");
function duration(secs) {
  if (secs === null || secs === undefined) return "—";
  const neg = secs < 0; secs = Math.abs(Math.round(secs));
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  const out = h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  return neg ? "-" + out : out;
}
const round = (v) => (v === null || v === undefined ? "—" : Math.round(v * 10) / 10);

// ---- login and tabs ------------------------------------------------------------------------
let current = "accounts";
let timer = null;

function logout(message) {
  sessionStorage.removeItem("wxpipe-admin-token");
  $("#login").hidden = false;
  $("#tabs").hidden = true;
  $("#logout").hidden = true;
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = true; });
  $("#login-error").textContent = message || "";
  if (timer) clearInterval(timer);
}

async function login(tok) {
  sessionStorage.setItem("wxpipe-admin-token", tok);
  try {
    await api("/v1/console/platform");
  } catch (e) {
    logout(e.message);
    return;
  }
  $("#login").hidden = true;
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  show(current);
}

const loaders = {
  accounts: () => loadAccounts(),
  platform: () => loadPlatform(),
  authorize: () => loadAuthLink(),
  dead: () => loadDead(),
  traffic: () => loadTraffic(),
  releases: () => loadReleases(),
};

function show(tab) {
  current = tab;
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== tab; });
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  if (timer) clearInterval(timer);
  const load = () => loaders[tab]().catch((e) => toast(e.message));
  load();
  if (tab === "traffic" || tab === "platform" || tab === "releases") timer = setInterval(load, 5000);
}

// ---- accounts ------------------------------------------------------------------------------
let page = 1;

async function loadAccounts() {
  const q = encodeURIComponent($("#q").value.trim());
  const status = encodeURIComponent($("#status").value);
  const r = await api(`/v1/console/accounts?q=${q}&status=${status}&page=${page}&per_page=25`);
  page = r.page;
  $("#account-summary").textContent = t("accounts_summary", r);
  $("#page-info").textContent = t("page", { p: r.page, n: r.pages });
  $("#prev").disabled = r.page <= 1;
  $("#next").disabled = r.page >= r.pages;
  const body = $("#account-table tbody");
  body.replaceChildren();
  const now = Date.now() / 1000;
  for (const a of r.accounts) {
    const tr = el("tr", undefined, "clickable");
    tr.dataset.appid = a.appid;
    tr.append(
      el("td", a.appid),
      el("td", a.nick_name || a.user_name || "—"),
      el("td", t(a.type)),
      el("td", a.status, "status-" + a.status),
      el("td", a.expires_at ? duration(a.expires_at - now) : "—"),
      el("td", whenSecs(a.last_refresh)),
      el("td", a.last_error || "", "muted"),
    );
    tr.addEventListener("click", () => loadAccount(a.appid).catch((e) => toast(e.message)));
    body.append(tr);
  }
}

async function loadAccount(appid) {
  const r = await api(`/v1/console/accounts/${encodeURIComponent(appid)}`);
  const a = r.account, p = r.profile || {};
  const box = $("#account-detail");
  box.hidden = false;
  box.replaceChildren();
  box.append(el("h3", `${a.nick_name || appid} (${appid})`));
  const dl = el("dl");
  const row = (k, v) => dl.append(el("dt", t(k)), el("dd", v === undefined || v === null || v === "" ? "—" : v));
  row("status", a.status);
  row("type", t(r.type));
  row("token_expiry", a.expires_at ? when(a.expires_at * 1000) : "—");
  row("last_refresh", whenSecs(a.last_refresh));
  row("last_error", a.last_error);
  row("next_refresh", when(r.next_refresh_ms));
  row("failed_attempts", r.failed_attempts);
  const tk = r.tickets || {};
  if (tk.jsapi) row("jsapi_ticket", when(tk.jsapi.expires_at * 1000) + (tk.jsapi.birth_known ? "" : ` (${t("age_unknown")})`));
  if (tk.wx_card) row("wx_card_ticket", when(tk.wx_card.expires_at * 1000));
  if (r.next_ticket_ms) row("next_ticket", when(r.next_ticket_ms));
  row("refreshes", a.refreshes);
  row("authorized_at", whenSecs(a.authorized_at));
  row("permissions", (p.permissions || []).join(", ") || t("none"));
  row("service_type", p.service_type);
  row("verify_type", p.verify_type);
  row("principal", p.principal_name);
  box.append(dl);
  const actions = el("div", undefined, "toolbar");
  const refresh = el("button", t("refresh_now"));
  refresh.id = "refresh-now";
  refresh.addEventListener("click", async () => {
    try {
      await api(`/v1/authorizers/${encodeURIComponent(appid)}/refresh`, { method: "POST" });
      toast(t("done"));
      await loadAccount(appid);
    } catch (e) { toast(e.message); }
  });
  const invalidate = el("button", t("invalidate"), "danger");
  invalidate.addEventListener("click", async () => {
    if (!confirm(t("confirm_invalidate", { appid }))) return;
    try {
      await api(`/v1/console/accounts/${encodeURIComponent(appid)}/invalidate`, { method: "POST" });
      toast(t("done"));
      await loadAccount(appid);
    } catch (e) { toast(e.message); }
  });
  actions.append(refresh, invalidate);
  box.append(actions);
}

// ---- platform ------------------------------------------------------------------------------
function card(container, label, value, cls) {
  const c = el("div", undefined, "card" + (cls ? " " + cls : ""));
  c.append(el("div", label, "label"), el("div", value, "value"));
  container.append(c);
}

async function loadPlatform() {
  const r = await api("/v1/console/platform");
  const cards = $("#platform-cards");
  cards.replaceChildren();
  card(cards, "component_appid", r.component_appid || "—");
  card(cards, t("ticket_age"), r.ticket ? duration(r.ticket_age_secs) : t("none"),
    !r.ticket || r.ticket_age_secs > 1800 ? "bad" : "good");
  card(cards, t("component_token"), duration(r.component_token_expires_in_secs),
    !r.component_token_expires_in_secs || r.component_token_expires_in_secs < 600 ? "bad" : "good");
  card(cards, t("failures"), r.failures ? r.failures.failures : 0, r.failures && r.failures.failures ? "bad" : "");
  const body = $("#errcodes tbody");
  body.replaceChildren();
  for (const [code, n] of Object.entries(r.wechat_errors_15m || {})) {
    const tr = el("tr");
    tr.append(el("td", code), el("td", Math.round(n)));
    body.append(tr);
  }
  const quota = $("#quota");
  quota.replaceChildren();
  const closed = Object.entries(r.quota_exhausted || {});
  if (!closed.length) quota.append(el("p", t("quota_ok"), "muted"));
  for (const [api_, v] of closed) quota.append(el("p", `${api_}: ${t("closed_until")} ${when(v.closed_until_ms)}`, "error"));
}

// ---- authorization link --------------------------------------------------------------------
async function loadAuthLink() {
  $("#auth-error").textContent = "";
  try {
    const r = await api("/v1/console/auth-link");
    const a = $("#auth-url");
    a.href = r.url;
    a.textContent = r.url;
    const img = el("img");
    img.alt = r.url;
    img.src = "data:image/svg+xml;base64," + btoa(r.qr_svg);
    img.width = 220;
    img.height = 220;
    $("#qr").replaceChildren(img);
  } catch (e) {
    $("#auth-error").textContent = e.message;
  }
}

// ---- dead letters --------------------------------------------------------------------------
let deadCount = 0;

async function loadDead() {
  const r = await api("/v1/dlq");
  deadCount = r.total;
  $("#dead-summary").textContent = r.total ? `${r.total} ${t("letters")} (${r.queue})` : t("no_letters");
  const body = $("#dead-groups tbody");
  body.replaceChildren();
  for (const g of r.groups) {
    const tr = el("tr");
    const use = el("button", t("replay_this"));
    use.addEventListener("click", () => {
      $("#r-source").value = g.source;
      $("#r-reason").value = g.reason;
    });
    const action = el("td");
    action.append(use);
    tr.append(el("td", g.source), el("td", g.reason), el("td", g.count), el("td", when(g.oldest_ms)), el("td", g.oldest_detail, "muted"), action);
    body.append(tr);
  }
}

async function replay(ev) {
  ev.preventDefault();
  const body = { dry_run: $("#r-dry").checked };
  for (const [k, id] of [["source", "#r-source"], ["reason", "#r-reason"], ["since", "#r-since"]]) {
    const v = $(id).value.trim();
    if (v) body[k] = v;
  }
  const limit = parseInt($("#r-limit").value, 10);
  if (limit > 0) body.limit = limit;
  const out = $("#replay-result");
  try {
    const r = await api("/v1/dlq/replay", { method: "POST", body });
    const lines = r.dry_run
      ? [`would replay ${r.chosen_total} of ${r.total}`].concat(r.chosen.map((c) => `#${c.position} ${c.source} → ${c.exchange} ${c.routing_key} (${c.reason})`))
      : [`replayed ${r.replayed}; ${r.left} left`].concat(r.failed, r.failed_total > r.failed.length ? [`… ${r.failed_total - r.failed.length} more`] : []);
    out.textContent = lines.join("\n");
    await loadDead();
  } catch (e) { out.textContent = e.message; }
}

async function showLetter(ev) {
  ev.preventDefault();
  const out = $("#letter");
  try {
    const r = await api(`/v1/dlq/${encodeURIComponent($("#position").value)}`);
    out.textContent = JSON.stringify(r, null, 2);
  } catch (e) { out.textContent = e.message; }
}

async function purge() {
  await loadDead();
  if (!deadCount || !confirm(t("confirm_purge", { n: deadCount }))) return;
  try {
    const r = await api("/v1/dlq/purge", { method: "POST", body: { expected: deadCount } });
    $("#purge-result").textContent = `purged ${r.purged}`;
    await loadDead();
  } catch (e) { $("#purge-result").textContent = e.message; }
}

// ---- traffic -------------------------------------------------------------------------------
function chart(svg, values) {
  const w = 300, h = 80;
  const max = Math.max(1, ...values.filter((v) => v !== null));
  const n = Math.max(values.length - 1, 1);
  const pts = values.map((v, i) => `${(i / n) * w},${h - ((v || 0) / max) * (h - 4) - 2}`).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts);
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "2"); label.setAttribute("y", "10"); label.setAttribute("font-size", "9");
  label.textContent = "max " + round(max);
  svg.replaceChildren(line, label);
}

async function loadTraffic() {
  const r = await api("/v1/console/traffic");
  const last = r.points[r.points.length - 1] || {};
  const cards = $("#traffic-cards");
  cards.replaceChildren();
  card(cards, t("pushes_s"), round(last.pushes));
  card(cards, t("events_s"), round(last.events));
  card(cards, t("refused_s"), round(last.refused), last.refused ? "bad" : "");
  card(cards, t("publish_p99"), round(last.publish_p99_ms));
  card(cards, t("pushes_total"), Math.round(r.pushes_total));
  card(cards, t("events_total"), Math.round(r.events_total));
  card(cards, t("live_processes"), r.processes.length);
  chart($("#chart-pushes"), r.points.map((p) => p.pushes));
  chart($("#chart-events"), r.points.map((p) => p.events));
  chart($("#chart-refused"), r.points.map((p) => p.refused));
  chart($("#chart-latency"), r.points.map((p) => p.publish_p99_ms));
  const ref = $("#refusals tbody");
  ref.replaceChildren();
  for (const [reason, n] of Object.entries(r.refusals_by_reason)) {
    const tr = el("tr");
    tr.append(el("td", reason), el("td", Math.round(n)));
    ref.append(tr);
  }
  const procs = $("#processes tbody");
  procs.replaceChildren();
  for (const p of r.processes) {
    const tr = el("tr");
    tr.append(el("td", p.id), el("td", p.role), el("td", duration(p.seen_secs_ago)), el("td", duration(p.up_secs)));
    procs.append(tr);
  }
}

// ---- releases ------------------------------------------------------------------------------
const STATES = ["released", "gray_released", "audit_passed", "audit_submitted", "audit_delayed", "committed",
  "waiting_quota", "pending", "rolling_back", "rolled_back", "audit_failed", "release_failed", "rollback_failed",
  "undoing_audit", "skipped", "cancelled"];
const COLORS = {
  released: "#1a7f37", gray_released: "#4ac26b", audit_passed: "#2da44e", audit_submitted: "#0969da",
  audit_delayed: "#54aeff", committed: "#8250df", waiting_quota: "#bf8700", pending: "#d0d7de",
  rolling_back: "#fb8f44", rolled_back: "#bc4c00", audit_failed: "#cf222e", release_failed: "#a40e26",
  rollback_failed: "#82071e", undoing_audit: "#6e7781", skipped: "#8c959f", cancelled: "#57606a",
};
let openRelease = null;

function bar(counts, total) {
  const b = el("div", undefined, "bar");
  for (const s of STATES) {
    const n = counts[s] || 0;
    if (!n) continue;
    const part = el("span");
    part.style.width = (100 * n / Math.max(total, 1)) + "%";
    part.style.background = COLORS[s];
    part.title = `${t("st_" + s)}: ${n}`;
    part.dataset.state = s;
    b.append(part);
  }
  return b;
}

async function loadReleases() {
  const r = await api("/v1/releases");
  const body = $("#rel-table tbody");
  body.replaceChildren();
  if (!r.releases.length) {
    const tr = el("tr");
    const td = el("td", t("rel_none"), "muted");
    td.colSpan = 7;
    tr.append(td);
    body.append(tr);
  }
  for (const j of r.releases) {
    const tr = el("tr", undefined, "clickable");
    tr.dataset.id = j.id;
    const progress = el("td");
    progress.append(bar(j.counts, j.total), el("span", `${j.finished} / ${j.total}`, "muted"));
    tr.append(el("td", j.id), el("td", j.user_version), el("td", t(j.status), "status-" + j.status), progress,
      el("td", j.rate_per_min), el("td", j.eta_secs ? duration(j.eta_secs) : "—"), el("td", when(j.created_ms)));
    tr.addEventListener("click", () => { openRelease = j.id; loadRelease(j.id).catch((e) => toast(e.message)); });
    body.append(tr);
  }
  if (openRelease) await loadRelease(openRelease);
}

async function releaseAction(id, action, confirmKey) {
  if (confirmKey && !confirm(t(confirmKey))) return;
  try {
    await api(`/v1/releases/${encodeURIComponent(id)}/${action}`, { method: "POST", body: {} });
    toast(t("done"));
    await loadReleases();
  } catch (e) { toast(e.message); }
}

async function loadRelease(id) {
  const j = await api(`/v1/releases/${encodeURIComponent(id)}`);
  const box = $("#rel-detail");
  box.hidden = false;
  box.replaceChildren();
  box.append(el("h3", `${j.id} · ${j.user_version} · ${t(j.status)}`));
  if (j.status_reason) box.append(el("p", j.status_reason, "error"));
  box.append(bar(j.counts, j.total));
  const legend = el("div", undefined, "legend counts");
  for (const s of STATES) {
    if (!j.counts[s]) continue;
    const item = el("span", `${t("st_" + s)}: ${j.counts[s]}`);
    item.style.setProperty("--c", COLORS[s]);
    item.dataset.state = s;
    legend.append(item);
  }
  box.append(legend);
  if (j.audit_quota) $("#rel-quota").textContent = t("rel_quota", j.audit_quota);
  const actions = el("div", undefined, "toolbar");
  const button = (key, action, cls, confirmKey) => {
    const b = el("button", t(key), cls);
    b.dataset.action = action;
    b.addEventListener("click", () => releaseAction(j.id, action, confirmKey));
    actions.append(b);
  };
  if (j.status === "running") button("rel_pause", "pause");
  if (j.status === "paused") button("rel_resume", "resume");
  if ((j.counts.audit_failed || 0) + (j.counts.release_failed || 0) > 0 && j.status !== "cancelled") button("rel_retry", "retry");
  if (j.release === "manual" && (j.counts.audit_passed || 0) > 0) button("rel_release", "release");
  if ((j.counts.released || 0) > 0) button("rel_rollback", "rollback", "danger", "rel_confirm_rollback");
  if (j.status === "running" || j.status === "paused") button("rel_cancel", "cancel", "danger", "rel_confirm_cancel");
  box.append(actions);
  for (const [title, states] of [["rel_failures", ["audit_failed", "release_failed", "rollback_failed"]],
                                 ["rel_waiting", ["waiting_quota"]], ["rel_skipped", ["skipped"]]]) {
    const rows = [];
    for (const s of states) {
      if (!j.counts[s]) continue;
      const r = await api(`/v1/releases/${encodeURIComponent(j.id)}/accounts?state=${s}&limit=100`);
      rows.push(...r.accounts);
    }
    if (!rows.length) continue;
    box.append(el("h4", `${t(title)} (${rows.length})`));
    const table = el("table");
    table.className = "rel-accounts";
    table.dataset.list = states[0];
    const head = el("tr");
    head.append(el("th", "appid"), el("th", t("status")), el("th", t("reason")), el("th", t("rel_screenshots")));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    for (const a of rows) {
      const tr = el("tr");
      tr.append(el("td", a.appid), el("td", t("st_" + a.state)), el("td", a.reason || ""), el("td", (a.screenshots || []).join(" | "), "muted"));
      tbody.append(tr);
    }
    table.append(thead, tbody);
    box.append(table);
  }
}

async function showReleaseForm() {
  const form = $("#rel-form");
  form.hidden = !form.hidden;
  if (form.hidden) return;
  $("#rel-error").textContent = "";
  const r = await api("/v1/releases/templates");
  const sel = $("#rel-template");
  sel.replaceChildren();
  for (const tpl of r.templates) {
    const o = el("option", `${tpl.template_id} · ${tpl.user_version} · ${tpl.user_desc}`);
    o.value = tpl.template_id;
    sel.append(o);
  }
}

async function createRelease(ev) {
  ev.preventDefault();
  const err = $("#rel-error");
  err.textContent = "";
  const body = {
    template_id: parseInt($("#rel-template").value, 10),
    user_version: $("#rel-version").value.trim(),
    user_desc: $("#rel-desc").value.trim(),
    concurrency: parseInt($("#rel-concurrency").value, 10) || 10,
  };
  body.targets = $("#rel-target-kind").value === "all"
    ? { filter: { type: "mini_program", status: "active", permission: 18 } }
    : { appids: $("#rel-appids").value.split(/[\s,]+/).filter((a) => a) };
  const mode = $("#rel-mode").value;
  body.release = mode === "gray" ? { gray: $("#rel-gray").value.split(/[\s,%]+/).filter((p) => p).map((p) => parseInt(p, 10)) } : mode;
  const stop = parseInt($("#rel-stop").value, 10);
  if (stop > 0) body.stop_when_failed_over = stop / 100;
  const ext = $("#rel-ext").value.trim();
  if (ext) {
    try {
      body.ext_json = JSON.parse(ext);
    } catch (_) { err.textContent = t("rel_bad_ext"); return; }
  }
  try {
    const r = await api("/v1/releases", { method: "POST", body });
    toast(t("rel_created_ok", r));
    $("#rel-form").hidden = true;
    openRelease = r.id;
    await loadReleases();
  } catch (e) { err.textContent = e.message; }
}

// ---- wiring --------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  applyLanguage();
  $("#lang").addEventListener("click", () => {
    lang = lang === "en" ? "zh-CN" : "en";
    localStorage.setItem("wxpipe-console-lang", lang);
    applyLanguage();
    if (token() && $("#login").hidden) show(current);
  });
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const tok = $("#token").value.trim();
    $("#token").value = "";
    login(tok);
  });
  $("#logout").addEventListener("click", () => logout(""));
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));
  $("#account-search").addEventListener("submit", (ev) => { ev.preventDefault(); page = 1; loadAccounts().catch((e) => toast(e.message)); });
  $("#prev").addEventListener("click", () => { page -= 1; loadAccounts().catch((e) => toast(e.message)); });
  $("#next").addEventListener("click", () => { page += 1; loadAccounts().catch((e) => toast(e.message)); });
  $("#dead-refresh").addEventListener("click", () => loadDead().catch((e) => toast(e.message)));
  $("#replay-form").addEventListener("submit", replay);
  $("#show-form").addEventListener("submit", showLetter);
  $("#purge").addEventListener("click", purge);
  $("#rel-new").addEventListener("click", () => showReleaseForm().catch((e) => toast(e.message)));
  $("#rel-refresh").addEventListener("click", () => loadReleases().catch((e) => toast(e.message)));
  $("#rel-form").addEventListener("submit", createRelease);
  $("#rel-target-kind").addEventListener("change", () => { $("#rel-appids").disabled = $("#rel-target-kind").value !== "list"; });
  $("#rel-mode").addEventListener("change", () => { $("#rel-gray").disabled = $("#rel-mode").value !== "gray"; });
  if (token()) login(token()); else logout("");
});
