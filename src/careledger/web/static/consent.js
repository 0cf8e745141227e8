// Trial e-consent and withdrawal signed by the participant's own key, in this browser: the key
// file is read here and never sent; the node receives only the signed transaction.
"use strict";
(() => {
  const PKCS8 = CL.fromHex("302e020100300506032b657004220420");
  const status = document.getElementById("sign-status");
  for (const form of document.querySelectorAll("form.sign-step")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const method = event.submitter ? event.submitter.value : "consent";
      status.textContent = "Signing…";
      try {
        const data = JSON.parse(await form.elements.key.files[0].text());
        if (data.type !== "careledger-ed25519-key" || !data.seed) throw new Error("choose your (unprotected) key file");
        const key = await crypto.subtle.importKey("pkcs8", CL.concat(PKCS8, CL.b64Decode(data.seed)), { name: "Ed25519" }, false, ["sign"]);
        const args = { study: form.dataset.study };
        if (method === "consent") args.version = Number(form.dataset.version);
        const body = {
          chain: form.dataset.chain,
          contract: "trials",
          method,
          args,
          signer: data.public_key,
          nonce: Date.now() * 1000,
          created: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
        };
        const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key, new TextEncoder().encode(CL.canonical(body))));
        const response = await fetch("/v1/tx?wait=true", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ body, sig: CL.b64urlEncode(sig) }),
        });
        const answer = await response.json();
        const receipt = answer.receipt || {};
        if (!response.ok || receipt.result !== "accepted") throw new Error(receipt.code || answer.code || answer.detail);
        window.location.reload();
      } catch (error) {
        status.textContent = "Not done: " + error.message;
      }
    });
  }
})();
