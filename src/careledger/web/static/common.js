// Small helpers shared by the portal's scripts (no dependencies).
"use strict";
const CL = {
  b64urlEncode(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
  b64Decode(text) {
    const std = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = std + "===".slice((std.length + 3) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  },
  hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  },
  fromHex(text) {
    return Uint8Array.from(text.match(/../g) || [], (h) => parseInt(h, 16));
  },
  concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  },
  async sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  },
  // RFC 8785 for the flat objects receipts are (strings and integers).
  canonical(value) {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    if (Array.isArray(value)) return "[" + value.map(CL.canonical).join(",") + "]";
    return "{" + Object.keys(value).sort()
      .map((k) => JSON.stringify(k) + ":" + CL.canonical(value[k])).join(",") + "}";
  },
  // Sign one transaction with the member's key file, here in the browser (the key never leaves
  // it), and submit it; the receipt, or an Error with the ledger's code.
  async signAndSubmit(keyFile, { chain, contract, method, args }) {
    const data = JSON.parse(await keyFile.text());
    if (data.type !== "careledger-ed25519-key" || !data.seed) throw new Error("choose your (unprotected) key file");
    const pkcs8 = CL.concat(CL.fromHex("302e020100300506032b657004220420"), CL.b64Decode(data.seed));
    const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
    const body = {
      chain, contract, method, args,
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
    return receipt;
  },
};

// Destructive or binding actions ask first and say what will happen: a form (or button) with
// data-confirm shows its message; cancelling stops the submit before any other handler runs.
document.addEventListener(
  "submit",
  (event) => {
    const form = event.target;
    const message = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
    if (message && !window.confirm(message)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  },
  true,
);
