// Trial e-consent and withdrawal signed by the participant's own key, in this browser: the key
// file is read here and never sent; the node receives only the signed transaction.
"use strict";
(() => {
  const status = document.getElementById("sign-status");
  for (const form of document.querySelectorAll("form.sign-step")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const method = event.submitter ? event.submitter.value : "consent";
      status.textContent = "Signing…";
      try {
        const args = { study: form.dataset.study };
        if (method === "consent") args.version = Number(form.dataset.version);
        await CL.signAndSubmit(form.elements.key.files[0], {
          chain: form.dataset.chain, contract: "trials", method, args,
        });
        window.location.reload();
      } catch (error) {
        status.textContent = "Not done: " + error.message;
      }
    });
  }
})();
