// Enrolling a second factor: the secret as a QR code (and as text), a code to confirm it,
// then the recovery codes, shown this once.
import qrcode from "qrcode-generator";
import { useEffect, useState } from "preact/hooks";
import { post } from "../api.js";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";

export function qrDataUrl(text) {
  const qr = qrcode(0, "M");
  qr.addData(text);
  qr.make();
  return qr.createDataURL(5, 4);
}

export function RecoveryCodes({ codes }) {
  return (
    <div class="recovery">
      <p>
        <strong>Recovery codes.</strong> Keep them somewhere safe: each signs you in once if you lose your authenticator. They are not shown again.
      </p>
      <ul class="codes" aria-label="Recovery codes">
        {codes.map((c) => (
          <li key={c}>
            <code>{c}</code>
          </li>
        ))}
      </ul>
    </div>
  );
}

/** Start enrolment (at once with `autoStart`, when the caller's own button asked for it), show
 * the QR code, confirm with a code; `onDone()` after the codes are seen. */
export function TotpEnrolment({ onDone, doneLabel = "I have saved my recovery codes", autoStart = false }) {
  const [secret, setSecret] = useState(null);
  const [codes, setCodes] = useState(null);
  const start = useForm({});
  const confirm = useForm({ code: "" });
  const begin = start.submit(async () => setSecret(await post("/profile/totp")));
  useEffect(() => {
    if (autoStart) begin();
  }, []);
  const check = confirm.submit(async (v) => {
    const answer = await post("/profile/totp/confirm", { code: v.code.replace(/\s/g, "") });
    setCodes(answer.recovery_codes);
  });
  if (codes) {
    return (
      <div>
        <RecoveryCodes codes={codes} />
        <button type="button" class="btn btn-primary" onClick={onDone}>
          {doneLabel}
        </button>
      </div>
    );
  }
  if (!secret) {
    return (
      <form onSubmit={begin}>
        <FormError error={start.errors._form} />
        <p>Use an authenticator app (for example one that reads QR codes) to add a second step to your sign-in.</p>
        <Submit busy={start.busy}>Set up two-step sign-in</Submit>
      </form>
    );
  }
  return (
    <form onSubmit={check} noValidate>
      <p>Scan this code with your authenticator app, then type the 6 digits it shows.</p>
      <img class="qr" src={qrDataUrl(secret.otpauth_uri)} alt="QR code of your authenticator secret" width="200" height="200" />
      <p>
        Or type this secret: <code class="secret" data-testid="totp-secret">{secret.secret}</code>
      </p>
      <FormError error={confirm.errors._form} />
      <Field label="Code from the app" {...confirm.bind("code")} inputMode="numeric" autocomplete="one-time-code" />
      <Submit busy={confirm.busy}>Confirm</Submit>
    </form>
  );
}
