// Break-glass: the clinician's own key signs consent.break_glass in this browser (the node
// cannot sign for a clinician); then the history opens with purpose ETREAT.
"use strict";
(() => {
  const form = document.getElementById("glass");
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
})();
