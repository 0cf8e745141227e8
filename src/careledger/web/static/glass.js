// Break-glass: the clinician's own key signs consent.break_glass in this browser (the node
// cannot sign for a clinician); then the history opens with purpose ETREAT.
"use strict";
(() => {
  const PKCS8 = CL.fromHex("302e020100300506032b657004220420");
  const form = document.getElementById("glass");
  const status = document.getElementById("glass-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "Signing…";
    try {
      const data = JSON.parse(await document.getElementById("glass-key").files[0].text());
      if (data.type !== "careledger-ed25519-key" || !data.seed) throw new Error("choose your (unprotected) key file");
      const key = await crypto.subtle.importKey("pkcs8", CL.concat(PKCS8, CL.b64Decode(data.seed)), { name: "Ed25519" }, false, ["sign"]);
      const body = {
        chain: form.dataset.chain,
        contract: "consent",
        method: "break_glass",
        args: { patient: form.dataset.patient, reason: form.elements.reason.value, purpose: "ETREAT" },
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
      if (!response.ok) throw new Error(answer.code || answer.detail);
      window.location.assign(`/clinician?patient=${encodeURIComponent(form.dataset.patient)}&emergency=true`);
    } catch (error) {
      status.textContent = "Not done: " + error.message;
    }
  });
})();
