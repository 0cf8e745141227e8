// Sign in: this browser signs the node's challenge with the member's Ed25519 key (WebCrypto);
// only the signature leaves the page. The portal keeps the resulting token in an HttpOnly cookie.
"use strict";
(() => {
  const ED25519_PKCS8_PREFIX = CL.fromHex("302e020100300506032b657004220420");
  // A passphrase-protected file: Argon2id(passphrase as NFC UTF-8, salt) opens the
  // XSalsa20-Poly1305 box holding the seed (libsodium, as the CLI writes it), here.
  async function unlock(data) {
    const passphrase = document.getElementById("passphrase").value;
    if (!passphrase) throw new Error("this key file is protected: type its passphrase");
    const kdf = data.kdf || {};
    if (kdf.alg !== "argon2id") throw new Error("unknown key protection");
    if (kdf.opslimit > 4 || kdf.memlimit > 1073741824) throw new Error("the key file asks for too much work");
    await sodium.ready;
    const key = sodium.crypto_pwhash(
      32, new TextEncoder().encode(passphrase.normalize("NFC")), CL.b64Decode(kdf.salt),
      kdf.opslimit, kdf.memlimit, sodium.crypto_pwhash_ALG_ARGON2ID13,
    );
    const sealed = CL.b64Decode(data.encrypted_seed);
    try {
      return sodium.crypto_secretbox_open_easy(sealed.slice(24), sealed.slice(0, 24), key);
    } catch {
      throw new Error("wrong passphrase");
    }
  }

  const form = document.getElementById("signin");
  const status = document.getElementById("signin-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "Signing…";
    try {
      const file = document.getElementById("keyfile").files[0];
      if (!file) throw new Error("choose your key file");
      const data = JSON.parse(await file.text());
      if (data.type !== "careledger-ed25519-key") throw new Error("this is not a CareLedger key file");
      const seed = data.seed ? CL.b64Decode(data.seed) : await unlock(data);
      const pkcs8 = CL.concat(ED25519_PKCS8_PREFIX, seed);
      const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
      const challenge = await (await fetch("/v1/auth/challenge", { method: "POST" })).json();
      const message = new TextEncoder().encode(challenge.message);
      const signature = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key, message));
      const response = await fetch("/v1/auth/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          public_key: data.public_key,
          challenge: challenge.challenge,
          signature: CL.b64urlEncode(signature),
        }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || body.code);
      const kept = await fetch("/session", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: body.access_token }),
      });
      if (!kept.ok) throw new Error((await kept.json()).detail || "the portal refused the session");
      // back to the page that asked for a sign-in (a path on this site only)
      // resolved against this page and kept only if it stays on this origin ("/\t/evil" and
      // similar tricks resolve elsewhere and are dropped)
      const asked = new URLSearchParams(window.location.search).get("next") || "/";
      let target = "/";
      try {
        const resolved = new URL(asked, window.location.origin);
        if (resolved.origin === window.location.origin) target = resolved.pathname + resolved.search;
      } catch { target = "/"; }
      window.location.assign(target);
    } catch (error) {
      status.textContent = "Could not sign in: " + error.message;
    }
  });
  // enabled only now that this script listens: a click before would submit the bare form
  form.querySelector("button[type=submit]").disabled = false;
})();
