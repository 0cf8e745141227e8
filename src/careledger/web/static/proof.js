// Check a transaction's inclusion proof here, step by step (RFC 9162 section 2.1.3.2), and the
// checkpoint's Ed25519 signature: nothing is taken on the node's word.
"use strict";
(async () => {
  const proof = JSON.parse(document.getElementById("proof-data").textContent);
  const vkey = document.getElementById("vkey").textContent.trim();
  const steps = document.getElementById("proof-steps");
  const verdict = document.getElementById("proof-verdict");
  const step = (text, ok = true) => {
    const li = document.createElement("li");
    li.textContent = (ok ? "✓ " : "✗ ") + text;
    li.className = ok ? "ok" : "bad";
    steps.appendChild(li);
    return ok;
  };
  const node = async (left, right) =>
    CL.sha256(CL.concat(Uint8Array.of(1), left, right));
  try {
    const leaf = new TextEncoder().encode(CL.canonical(proof.receipt));
    let r = await CL.sha256(CL.concat(Uint8Array.of(0), leaf));
    step(`leaf hash of the receipt (RFC 8785 bytes): ${CL.hex(r).slice(0, 16)}…`);
    let fn = proof.leaf_index;
    let sn = proof.proof.tree_size - 1;
    for (const [i, h] of proof.proof.path.entries()) {
      const p = CL.fromHex(h);
      if (sn === 0) throw new Error("the path is longer than the tree");
      if (fn % 2 === 1 || fn === sn) {
        r = await node(p, r);
        if (fn % 2 === 0) { while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); } }
        step(`step ${i + 1}: sibling on the left → ${CL.hex(r).slice(0, 16)}…`);
      } else {
        r = await node(r, p);
        step(`step ${i + 1}: sibling on the right → ${CL.hex(r).slice(0, 16)}…`);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    const okPath = sn === 0 && CL.hex(r) === proof.proof.root;
    step(`computed root equals the proof's root ${proof.proof.root.slice(0, 16)}…`, okPath);
    const note = proof.checkpoint;
    const split = note.lastIndexOf("\n\n");
    const body = note.slice(0, split + 1);
    const lines = body.split("\n");
    const noteRoot = CL.hex(CL.b64Decode(lines[2]));
    const okRoot = noteRoot === CL.hex(r) && Number(lines[1]) === proof.proof.tree_size;
    step(`the signed checkpoint names the same root and size ${lines[1]}`, okRoot);
    // name+keyhash+base64(0x01 || key): the base64 may itself hold "+" characters
    const first = vkey.indexOf("+");
    const second = vkey.indexOf("+", first + 1);
    const [vname, vhash, vkeyB64] = [vkey.slice(0, first), vkey.slice(first + 1, second), vkey.slice(second + 1)];
    const pub = CL.b64Decode(vkeyB64).slice(1);
    const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
    let okSig = false;
    for (const line of note.slice(split + 2).split("\n")) {
      const [dash, name, sig] = line.split(" ");
      if (dash !== "\u2014" || name !== vname) continue;
      const raw = CL.b64Decode(sig);
      if (CL.hex(raw.slice(0, 4)) !== vhash) continue;
      okSig = await crypto.subtle.verify({ name: "Ed25519" }, key, raw.slice(4), new TextEncoder().encode(body));
    }
    step(`checkpoint signature by ${vname} verifies`, okSig);
    const all = okPath && okRoot && okSig;
    const receipt = proof.receipt || {};
    if (all && receipt.result !== "accepted") {
      // included, and refused: never a green badge for a transaction that changed nothing
      verdict.textContent = `Included in the ledger: rejected (${receipt.code || "no code"})`;
      verdict.classList.add("bad");
    } else {
      verdict.textContent = all ? "Verified in your browser" : "NOT verified";
      verdict.classList.add(all ? "ok" : "bad");
    }
  } catch (error) {
    step(error.message, false);
    verdict.textContent = "NOT verified";
    verdict.classList.add("bad");
  }
})();
