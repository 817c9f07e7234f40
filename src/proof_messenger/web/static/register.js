// The enrolment page: create a passkey from the relay's registration options (one-use token).
import * as pm from "/static/proof-messenger.js";

const main = /** @type {HTMLElement} */ (document.getElementById("register"));
const statusBox = /** @type {HTMLElement} */ (document.getElementById("status"));
const button = /** @type {HTMLButtonElement} */ (document.getElementById("enrol"));
const token = new URLSearchParams(location.search).get("token") ?? "";

function setState(state, message) {
  main.dataset.state = state;
  statusBox.textContent = message;
  button.disabled = state === "working" || state === "registered";
  if (state === "registered") button.hidden = true;
}

const EXPIRED = "This enrolment link has expired or was already used. Ask for a new link.";

async function enrol() {
  setState("working", "Follow the instructions of your device to create the passkey…");
  try {
    const optionsResponse = await fetch("/webauthn/register/options", {
      headers: { "x-registration-token": token },
      cache: "no-store",
      credentials: "omit",
    });
    if (!optionsResponse.ok) {
      setState("error", EXPIRED);
      return;
    }
    const { options } = await optionsResponse.json();
    let credential;
    try {
      credential = await pm.registerPasskey(options);
    } catch (err) {
      console.warn("passkey creation failed", err);
      setState("error", "The passkey was not created (cancelled, timed out, or this device already has one for this account). You can try again.");
      return;
    }
    const response = await fetch("/webauthn/register/verify", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token, credential }),
      cache: "no-store",
      credentials: "omit",
    });
    const data = await response.json().catch(() => null);
    if (response.ok) {
      main.dataset.kid = data?.kid ?? "";
      setState("registered", "Your passkey is ready. You can now approve transactions with it.");
    } else if (data?.code === "registration_expired") {
      setState("error", EXPIRED);
    } else if (data?.code === "key_exists") {
      setState("error", "This passkey is already registered.");
    } else {
      setState("error", "The passkey could not be registered. Ask for a new enrolment link and try again.");
    }
  } catch {
    setState("error", "We could not reach the server. Check your connection and try again.");
  }
}

button.addEventListener("click", enrol);
main.dataset.ready = "true";
