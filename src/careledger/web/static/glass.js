// Break-glass: the clinician's own key signs consent.break_glass in this browser (the node
// cannot sign for a clinician); then the history opens with purpose ETREAT, or says that a
// colleague's co-signature is awaited. A colleague co-signs with consent.confirm_break_glass.
"use strict";
(() => {
  // Sign one consent call with the key file chosen in `form`, reporting in `status`.
  const signOnSubmit = (form, keyInput, status, method, args, done) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.textContent = "Signing…";
      try {
        await CL.signAndSubmit(keyInput.files[0], {
          chain: form.dataset.chain, contract: "consent", method, args: args(),
        });
        done();
      } catch (error) {
        status.textContent = "Not done: " + error.message;
      }
    });
  };
  const form = document.getElementById("glass");
  if (form) {
    signOnSubmit(form, document.getElementById("glass-key"), document.getElementById("glass-status"),
      "break_glass",
      () => ({ patient: form.dataset.patient, reason: form.elements.reason.value, purpose: "ETREAT" }),
      () => window.location.assign(`/clinician?patient=${encodeURIComponent(form.dataset.patient)}&emergency=true`));
  }
  for (const confirm of document.querySelectorAll("form.glass-confirm")) {
    if (confirm.dataset.bound) continue;
    confirm.dataset.bound = "1";
    const status = confirm.querySelector(".glass-status");
    signOnSubmit(confirm, confirm.querySelector("input[type=file]"), status, "confirm_break_glass",
      () => ({ id: confirm.dataset.id }),
      () => { status.textContent = "Co-signed: the emergency access is open."; });
  }
})();
