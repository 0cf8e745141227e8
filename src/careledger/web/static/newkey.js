// Make an Ed25519 key in this browser and offer it as a CareLedger key file (the format the
// CLI writes: {"type", "version", "name", "public_key", "seed"}, base64url, unencrypted).
"use strict";
(() => {
  document.getElementById("newkey").addEventListener("submit", async (event) => {
    event.preventDefault();
    const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
    const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
    const seed = pkcs8.slice(pkcs8.length - 32);
    const name = document.getElementById("name").value.trim() || "my-careledger-key";
    const file = {
      type: "careledger-ed25519-key", version: 1, name,
      public_key: CL.b64urlEncode(publicKey), seed: CL.b64urlEncode(seed),
    };
    const blob = new Blob([JSON.stringify(file, null, 2)], { type: "application/json" });
    const link = document.getElementById("download");
    link.href = URL.createObjectURL(blob);
    link.download = `${name}.key`;
    document.getElementById("public-key").textContent = file.public_key;
    document.getElementById("made").hidden = false;
  });
})();
