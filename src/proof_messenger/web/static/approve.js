// The approval page: sign the server's intent with a passkey, or decline; follow the status live.
// Loaded as an external module because the page's CSP forbids inline scripts.
import * as pm from "/static/proof-messenger.js";

const main = /** @type {HTMLElement} */ (document.getElementById("approval"));
const statusBox = /** @type {HTMLElement} */ (document.getElementById("status"));
const countdown = /** @type {HTMLElement} */ (document.getElementById("countdown"));
const approveBtn = /** @type {HTMLButtonElement} */ (document.getElementById("approve"));
const declineBtn = /** @type {HTMLButtonElement} */ (document.getElementById("decline"));

const id = main.dataset.approvalId ?? "";
const token = new URLSearchParams(location.search).get("t") ?? "";
const expiresAt = Number(main.dataset.expiresAt) * 1000;
const FINAL = new Set(["approved", "declined", "expired", "used"]);

const MESSAGES = {
  approved: "Approved. You can close this page.",
  declined: "Declined. Nothing was approved. You can close this page.",
  expired: "This request has expired. Nothing was approved. Ask for a new request if you still want to go ahead.",
  used: "This request was already answered. Nothing more is needed.",
  working: "Waiting for your passkey… Follow the instructions of your device.",
};

/** Plain-language explanations of the relay's error codes. */
function explain(code, detail) {
  switch (code) {
    case "approval_expired":
      return /already/.test(detail ?? "") ? ["used", MESSAGES.used] : ["expired", MESSAGES.expired];
    case "replayed":
      return ["used", MESSAGES.used];
    case "approval_mismatch":
      return ["error", "The details you signed do not match this request, so nothing was approved. Please reload the page and try again."];
    case "unknown_key":
    case "key_revoked":
    case "subject_mismatch":
      return ["error", "This passkey is not (or no longer) registered for your account. Use the passkey you set up for this service, or contact support."];
    case "webauthn_user_not_verified":
      return ["error", "This approval needs your fingerprint, face or device PIN. Please try again and unlock your passkey when asked."];
    case "webauthn_sign_count":
      return ["error", "For your safety this approval was refused: your passkey reported something unusual (it may have been copied). Please contact support."];
    case "webauthn_origin_mismatch":
    case "webauthn_rp_id_mismatch":
      return ["error", "This page is not the official approval page, so the approval was refused. Open the link you were sent again."];
    case "expired":
    case "not_yet_valid":
      return ["error", "The request timed out or your device's clock is wrong. Check the date and time on your device and try again."];
    case "rate_limited":
      return ["error", "Too many attempts. Please wait a minute and try again."];
    case "not_found":
      return ["error", "This approval link is not valid. Open the link you were sent again."];
    case "store_unavailable":
    case "internal_error":
      return ["error", "The service is temporarily unavailable. Please try again in a moment."];
    default:
      return ["error", `The approval could not be completed (${code ?? "unknown error"}). Please try again or contact support.`];
  }
}

function setState(state, message) {
  main.dataset.state = state;
  statusBox.textContent = message ?? "";
  const busy = state === "working" || FINAL.has(state);
  approveBtn.disabled = busy;
  declineBtn.disabled = busy;
  if (FINAL.has(state)) {
    stopCountdown();
    document.getElementById("actions")?.setAttribute("hidden", "");
  }
}

let timer = 0;
function stopCountdown() {
  if (timer) clearInterval(timer);
  timer = 0;
}
function tick() {
  const left = Math.max(0, Math.round((expiresAt - Date.now()) / 1000));
  const m = Math.floor(left / 60);
  const s = left % 60;
  countdown.textContent =
    left > 0 ? `Time left: ${m} min ${String(s).padStart(2, "0")} s` : "Time left: none";
  if (left === 0 && !FINAL.has(main.dataset.state ?? "")) setState("expired", MESSAGES.expired);
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", "x-approval-token": token },
    body,
    credentials: "omit",
    cache: "no-store",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { ok: response.ok, data };
}

async function approve() {
  setState("working", MESSAGES.working);
  let envelope;
  try {
    envelope = await pm.signIntentWithPasskey({
      intentBytes: pm.base64urlDecode(main.dataset.intent ?? ""),
      rpId: main.dataset.rpId,
      credentialId: main.dataset.credentialId || undefined,
      userVerification: main.dataset.requireUv === "true" ? "required" : "preferred",
    });
  } catch (err) {
    setState("pending", "Your passkey did not respond, or the request was cancelled. You can try again.");
    console.warn("passkey ceremony failed", err);
    return;
  }
  try {
    const { ok, data } = await post(`/approvals/${encodeURIComponent(id)}/proof`, pm.envelopeToJson(envelope));
    if (ok) {
      setState("approved", MESSAGES.approved);
    } else {
      const [state, message] = explain(data?.code, data?.detail);
      setState(FINAL.has(state) ? state : "pending", message);
      if (!FINAL.has(state)) main.dataset.state = "error";
    }
  } catch {
    setState("pending", "We could not reach the server. Check your connection and try again.");
  }
}

async function decline() {
  setState("working", "Declining…");
  try {
    const { ok, data } = await post(`/approvals/${encodeURIComponent(id)}/decline`, "{}");
    if (ok) setState("declined", MESSAGES.declined);
    else {
      const [state, message] = explain(data?.code, data?.detail);
      setState(FINAL.has(state) ? state : "pending", message);
    }
  } catch {
    setState("pending", "We could not reach the server. Check your connection and try again.");
  }
}

function follow() {
  const source = new EventSource(`/approvals/${encodeURIComponent(id)}/events?t=${encodeURIComponent(token)}`);
  source.addEventListener("status", (event) => {
    const { status } = JSON.parse(/** @type {MessageEvent} */ (event).data);
    if (FINAL.has(status) && main.dataset.state !== status) setState(status, MESSAGES[status]);
    if (FINAL.has(status)) source.close();
  });
}

approveBtn.addEventListener("click", approve);
declineBtn.addEventListener("click", decline);
const initial = main.dataset.state ?? "pending";
if (FINAL.has(initial)) {
  setState(initial, MESSAGES[initial]);
} else {
  tick();
  timer = setInterval(tick, 1000);
  follow();
}
main.dataset.ready = "true";
