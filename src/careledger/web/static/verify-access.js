// Check a "who saw my data" proof file here, in the browser, as `careledger verify-access` does
// (careledger/health/access_proof.py): the checkpoint's C2SP note signature (Ed25519, key id
// checked) by the node keys the user trusts, each receipt's RFC 9162 inclusion proof, each
// transaction's id, envelope hash and signature, and each readable entry against its
// transaction. Nothing is taken on the file's or the node's word; the file is sent nowhere.
"use strict";
(() => {
  const FORMAT = "careledger-access-proof";
  const VERSION = 1;
  const FROM_ARGS = ["accessor", "accessor_org", "action", "purpose", "app", "interaction", "recipient"];
  const LISTS = ["records", "windows"];
  const ENTRY_FIELDS = new Set([...FROM_ARGS, ...LISTS, "custodian", "time", "patient", "basis",
    "break_glass", "height", "tx"]);
  const BODY_FIELDS = ["args", "chain", "contract", "created", "method", "nonce", "signer"];
  const PURPOSES = {
    TREAT: "treatment", ETREAT: "emergency treatment", CAREMGT: "care coordination",
    HPAYMT: "payment", HOPERAT: "the provider's operations", HRESCH: "research",
    PATRQT: "your own request",
  };
  const BASES = {
    self: "you", custodian: "your care team at the organisation holding the record",
    consent: "a consent you gave", break_glass: "Emergency access (break-glass)",
    link: "a SMART Health Link you made",
  };
  const ACTIONS = { read: "read", write: "wrote", export: "exported" };

  class ProofError extends Error {
    constructor(code, message) { super(message); this.code = code; }
  }
  const mismatch = (message) => new ProofError("ACCESS_PROOF_MISMATCH", message);
  const untrusted = (message) => new ProofError("ACCESS_PROOF_UNTRUSTED", message);

  const utf8 = (text) => new TextEncoder().encode(text);
  const same = (a, b) => CL.canonical(a ?? null) === CL.canonical(b ?? null);
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const STD_B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
  const URL_B64 = /^[A-Za-z0-9_-]*$/;
  const b64 = (text, what) => {
    if (typeof text !== "string" || !text || !STD_B64.test(text)) throw mismatch(`${what} is not base64`);
    return CL.b64Decode(text);
  };
  const b64url = (text, what) => {
    if (typeof text !== "string" || !URL_B64.test(text)) throw mismatch(`${what} is not base64url`);
    return CL.b64Decode(text);
  };
  const importEd25519 = (raw) =>
    crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);

  // -- note verifier keys: <name>+<hex key id>+<base64(0x01 || public key)> --------------------
  async function parseVkey(text) {
    const first = text.indexOf("+");
    const second = text.indexOf("+", first + 1);
    if (first <= 0 || second < 0) throw untrusted(`"${text}" is not a node verifier key`);
    const name = text.slice(0, first);
    const id = text.slice(first + 1, second).toLowerCase();
    let raw;
    try { raw = b64(text.slice(second + 1), "the key"); } catch { raw = new Uint8Array(); }
    if (!/^[0-9a-f]{8}$/.test(id) || raw.length !== 33 || raw[0] !== 1) {
      throw untrusted(`"${text}" is not an Ed25519 node verifier key`);
    }
    const publicKey = raw.slice(1);
    const expected = (await CL.sha256(CL.concat(utf8(name + "\n"), Uint8Array.of(1), publicKey))).slice(0, 4);
    if (CL.hex(expected) !== id) throw untrusted(`"${text}": its key id does not match its name and key`);
    return { name, id, key: await importEd25519(publicKey) };
  }

  // -- the checkpoint: a C2SP signed note over origin, size and root --------------------------
  async function verifyCheckpoint(note, keys, minimum) {
    const split = note.lastIndexOf("\n\n");
    if (split < 0 || !note.endsWith("\n")) throw mismatch("the checkpoint is not a signed note");
    const body = note.slice(0, split + 1);
    const signers = new Map();
    for (const line of note.slice(split + 2, -1).split("\n")) {
      if (!line.startsWith("\u2014 ")) throw mismatch("the checkpoint has a malformed signature line");
      const [name, sig, ...extra] = line.slice(2).split(" ");
      if (extra.length) throw mismatch("the checkpoint has a malformed signature line");
      const raw = b64(sig, "a checkpoint signature");
      if (raw.length <= 4) throw mismatch("a checkpoint signature is too short");
      const id = CL.hex(raw.slice(0, 4));
      const known = keys.find((k) => k.name === name && k.id === id);
      if (!known) continue; // a key the user did not name: ignored, as the spec says
      const ok = raw.length === 68 &&
        await crypto.subtle.verify({ name: "Ed25519" }, known.key, raw.slice(4), utf8(body));
      if (!ok) throw mismatch(`the checkpoint's signature by ${name} does not verify`);
      signers.set(`${name}+${id}`, name);
    }
    if (signers.size < minimum) {
      throw untrusted(`the checkpoint is signed by ${signers.size} of the nodes you named, ${minimum} needed`);
    }
    const lines = body.slice(0, -1).split("\n");
    if (lines.length < 3 || lines.some((l) => !l) || !/^(0|[1-9][0-9]{0,15})$/.test(lines[1])) {
      throw mismatch("the checkpoint is malformed");
    }
    const root = b64(lines[2], "the checkpoint's root");
    if (root.length !== 32) throw mismatch("the checkpoint's root is not a SHA-256 hash");
    return { origin: lines[0], size: Number(lines[1]), root, signers: [...signers.values()] };
  }

  // -- RFC 9162 section 2.1.3.2: the root a leaf and its inclusion path lead to ---------------
  async function rootFromPath(leafHash, index, size, path) {
    if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) {
      throw new Error("the leaf is not in a tree of that size");
    }
    let fn = index;
    let sn = size - 1;
    let r = leafHash;
    for (const hex of path) {
      if (typeof hex !== "string" || !/^[0-9a-f]{64}$/.test(hex)) throw new Error("the path holds a bad hash");
      const p = CL.fromHex(hex);
      if (sn === 0) throw new Error("the path is longer than the tree");
      if (fn % 2 === 1 || fn === sn) {
        r = await CL.sha256(CL.concat(Uint8Array.of(1), p, r));
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        r = await CL.sha256(CL.concat(Uint8Array.of(1), r, p));
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the path is shorter than the tree");
    return r;
  }

  // -- one access: its transaction proven in the checkpoint, its entry matching it -------------
  async function verifyTransaction(item, checkpoint) {
    const envelope = item.envelope;
    const receipt = item.receipt;
    const proof = item.proof;
    if (!isObject(envelope) || !isObject(receipt) || !isObject(proof) || !Array.isArray(proof.path)) {
      throw new Error("is malformed");
    }
    if (proof.tree_size !== checkpoint.size) throw new Error("is proven in another tree than the checkpoint's");
    if (receipt.leaf_index !== item.leaf_index) throw new Error("has a receipt naming another leaf");
    let root;
    try {
      const leaf = await CL.sha256(CL.concat(Uint8Array.of(0), utf8(CL.canonical(receipt))));
      root = await rootFromPath(leaf, item.leaf_index, checkpoint.size, proof.path);
    } catch (error) {
      throw new Error(`does not verify against the checkpoint: ${error.message}`);
    }
    if (CL.hex(root) !== CL.hex(checkpoint.root)) {
      throw new Error("does not verify against the checkpoint: its path leads to another root");
    }
    const body = envelope.body;
    if (Object.keys(envelope).sort().join() !== "body,sig" || !isObject(body) ||
        Object.keys(body).sort().join() !== BODY_FIELDS.join()) {
      throw new Error("has an envelope that does not verify: malformed");
    }
    const signer = b64url(body.signer, "the signer's key");
    const sig = b64url(envelope.sig, "the signature");
    const signed = utf8(CL.canonical(body));
    const ok = signer.length === 32 && sig.length === 64 &&
      await crypto.subtle.verify({ name: "Ed25519" }, await importEd25519(signer), sig, signed);
    if (!ok) throw new Error("has an envelope that does not verify: bad signature");
    const txId = CL.hex(await CL.sha256(signed));
    const envelopeHash = CL.hex(await CL.sha256(utf8(CL.canonical(envelope))));
    if (txId !== item.tx || receipt.tx_id !== txId || receipt.envelope_hash !== envelopeHash ||
        receipt.chain !== body.chain) {
      throw new Error("is not the one its receipt names");
    }
    if (receipt.result !== "accepted") throw new Error("was refused by the ledger");
    if (body.contract !== "audit" || body.method !== "access") throw new Error("is not a call of audit.access");
    return { txId, body, receipt };
  }

  function entryDiffers(entry, args, txId, receipt) {
    const unknown = Object.keys(entry).filter((k) => !ENTRY_FIELDS.has(k)).sort();
    if (unknown.length) return `holds a field the ledger does not write: ${unknown[0]}`;
    if (entry.tx !== txId || entry.height !== receipt.height) return "names another transaction or block";
    if (entry.patient !== args.patient) return "names another patient";
    for (const name of FROM_ARGS) {
      if (!same(entry[name], args[name])) return `differs from the transaction in ${name}`;
    }
    for (const name of LISTS) {
      if (!same(entry[name] ?? [], args[name] ?? [])) return `differs from the transaction in ${name}`;
    }
    const basis = entry.basis;
    const said = args.basis;
    if (!isObject(basis) || !isObject(said)) return "has no basis";
    if (!same(basis.kind, said.kind) || !same(basis.id, said.id)) return "differs from the transaction in basis";
    if (Object.keys(basis).some((k) => k !== "kind" && k !== "id")) {
      return "holds a field the ledger does not write in basis";
    }
    if (entry.break_glass !== (said.kind === "break_glass")) {
      return "says break_glass where the basis does not (or not where it does)";
    }
    return "";
  }

  async function verifyAccessProof(doc, keyTexts, minimum) {
    if (!isObject(doc) || doc.format !== FORMAT) throw mismatch("this is not an access proof file");
    if (doc.version !== VERSION) throw mismatch(`access proof version ${doc.version} is not one this page knows`);
    if (!Number.isInteger(minimum) || minimum < 1) throw untrusted("at least one signature is needed");
    if (!keyTexts.length) {
      throw untrusted("name the node you trust (its key, from GET /v1/checkpoint/keys): anyone can make a key and sign a checkpoint");
    }
    const keys = [];
    for (const text of keyTexts) keys.push(await parseVkey(text));
    if (typeof doc.checkpoint !== "string" || typeof doc.patient !== "string" || !Array.isArray(doc.accesses)) {
      throw mismatch("the file lacks its checkpoint, patient or list of accesses");
    }
    const checkpoint = await verifyCheckpoint(doc.checkpoint, keys, minimum);
    if (doc.tree_size !== checkpoint.size || doc.chain !== checkpoint.origin) {
      throw mismatch("the file names another tree size or chain than its checkpoint");
    }
    const seen = new Set();
    const accesses = [];
    for (const [i, item] of doc.accesses.entries()) {
      const number = i + 1;
      if (!isObject(item)) throw mismatch(`access ${number} is not an object`);
      let proven;
      try {
        proven = await verifyTransaction(item, checkpoint);
      } catch (error) {
        throw mismatch(`access ${number}: the transaction ${error.message}`);
      }
      if (seen.has(proven.txId)) throw mismatch(`access ${number} is listed twice`);
      seen.add(proven.txId);
      const args = isObject(proven.body.args) ? proven.body.args : {};
      if (proven.receipt.chain !== checkpoint.origin) throw mismatch(`access ${number} is of another chain than the checkpoint`);
      if (args.patient !== doc.patient) throw mismatch(`access ${number} is to another patient's data than ${doc.patient}'s`);
      if (!isObject(item.entry)) throw mismatch(`access ${number} has no readable entry`);
      const why = entryDiffers(item.entry, args, proven.txId, proven.receipt);
      if (why) throw mismatch(`access ${number}: the readable entry ${why}`);
      accesses.push({ ...item.entry, created: proven.body.created });
    }
    return { patient: doc.patient, size: checkpoint.size, signers: checkpoint.signers, accesses };
  }

  // -- the page ------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  fetch("/v1/checkpoint/keys")
    .then((r) => (r.ok ? r.text() : ""))
    .then((text) => { if (!$("node-keys").value.trim()) $("node-keys").value = text.trim(); })
    .catch(() => { $("keys-source").textContent = "Paste the node keys you trust (this page could not fetch them)."; });

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function show(report) {
    const tbody = $("accesses").querySelector("tbody");
    tbody.replaceChildren();
    for (const a of [...report.accesses].reverse()) { // newest first, as the portal lists them
      const row = document.createElement("tr");
      row.dataset.testid = "proof-access";
      const kind = (a.basis || {}).kind;
      if (a.break_glass) row.className = "glass";
      cell(row, String(a.created || "").replace("T", " ").replace("Z", " UTC"));
      cell(row, `${a.accessor} (${a.accessor_org})` + (a.app ? `, via ${a.app}` : ""));
      const count = (a.records || []).length + (a.windows || []).length;
      cell(row, `${ACTIONS[a.action] || a.action} ${count} record${count === 1 ? "" : "s"}`);
      cell(row, PURPOSES[a.purpose] || a.purpose);
      cell(row, BASES[kind] || kind);
      tbody.appendChild(row);
    }
    $("accesses").hidden = report.accesses.length === 0;
  }

  $("check").addEventListener("submit", async (event) => {
    event.preventDefault();
    const verdict = $("verdict");
    const detail = $("verdict-detail");
    verdict.hidden = false;
    verdict.className = "badge";
    verdict.textContent = "checking…";
    detail.textContent = "";
    $("accesses").hidden = true;
    try {
      const file = $("proof-file").files[0];
      if (!file) throw mismatch("choose the proof file");
      let doc;
      try {
        doc = JSON.parse(await file.text());
      } catch {
        throw mismatch(`${file.name} is not a proof file (it is not JSON)`);
      }
      const keys = $("node-keys").value.split("\n").map((k) => k.trim()).filter(Boolean);
      const report = await verifyAccessProof(doc, keys, Number($("min-signatures").value));
      verdict.classList.add("ok");
      verdict.textContent = `Verified: ${report.accesses.length} access${report.accesses.length === 1 ? "" : "es"} to ${report.patient}'s data`;
      detail.textContent = `Each access below is on the ledger, in the checkpoint of size ${report.size} signed by ${report.signers.join(", ")}. ` +
        "That none is missing is the node's word.";
      show(report);
    } catch (error) {
      verdict.classList.add("bad");
      verdict.textContent = "NOT verified";
      detail.textContent = error instanceof ProofError ? `${error.code}: ${error.message}` : `Could not check: ${error.message}`;
    }
  });

  // for the tests and the curious: the same check, callable from the console
  window.verifyAccessProof = verifyAccessProof;
})();
