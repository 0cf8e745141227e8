// Scan a pack's GS1 DataMatrix with the camera where the browser can (BarcodeDetector), and
// verify what it reads; elsewhere the button stays hidden and typing or a USB scanner works.
"use strict";
(async () => {
  const button = document.getElementById("scan");
  if (!("BarcodeDetector" in window) || !navigator.mediaDevices?.getUserMedia) return;
  const formats = await BarcodeDetector.getSupportedFormats();
  if (!formats.includes("data_matrix")) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    const video = document.getElementById("camera");
    const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    const detector = new BarcodeDetector({ formats: ["data_matrix", "qr_code"] });
    const timer = setInterval(async () => {
      const [found] = await detector.detect(video);
      if (!found) return;
      clearInterval(timer);
      stream.getTracks().forEach((t) => t.stop());
      video.hidden = true;
      document.getElementById("link").value = found.rawValue;
      button.form.requestSubmit();
    }, 300);
  });
})();
