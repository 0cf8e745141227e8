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
};
