// Sign in: this browser signs the node's challenge with the member's Ed25519 key (WebCrypto);
// only the signature leaves the page. The portal keeps the resulting token in an HttpOnly cookie.
"use strict";
(() => {
  const ED25519_PKCS8_PREFIX = CL.fromHex("302e020100300506032b657004220420");
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
      if (!data.seed) {
        throw new Error("this key is passphrase-protected: sign in with a token from `careledger token` for now");
      }
      const pkcs8 = CL.concat(ED25519_PKCS8_PREFIX, CL.b64Decode(data.seed));
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
      window.location.assign("/");
    } catch (error) {
      status.textContent = "Could not sign in: " + error.message;
    }
  });
})();
