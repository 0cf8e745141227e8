// Break-glass: the clinician's own key signs consent.break_glass in this browser (the node
// cannot sign for a clinician); then the history opens with purpose ETREAT, or says that a
// colleague's co-signature is awaited. A colleague co-signs with consent.confirm_break_glass.
"use strict";
(() => {
  const form = document.getElementById("glass");
  if (form) {
    const status = document.getElementById("glass-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.textContent = "Signing…";
      try {
        await CL.signAndSubmit(document.getElementById("glass-key").files[0], {
          chain: form.dataset.chain,
          contract: "consent",
          method: "break_glass",
          args: { patient: form.dataset.patient, reason: form.elements.reason.value, purpose: "ETREAT" },
        });
        window.location.assign(`/clinician?patient=${encodeURIComponent(form.dataset.patient)}&emergency=true`);
      } catch (error) {
        status.textContent = "Not done: " + error.message;
      }
    });
  }
  for (const confirm of document.querySelectorAll("form.glass-confirm")) {
    if (confirm.dataset.bound) continue;
    confirm.dataset.bound = "1";
    confirm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = confirm.querySelector(".glass-status");
      status.textContent = "Signing…";
      try {
        await CL.signAndSubmit(confirm.querySelector("input[type=file]").files[0], {
          chain: confirm.dataset.chain,
          contract: "consent",
          method: "confirm_break_glass",
          args: { id: confirm.dataset.id },
        });
        status.textContent = "Co-signed: the emergency access is open.";
      } catch (error) {
        status.textContent = "Not done: " + error.message;
      }
    });
  }
})();
