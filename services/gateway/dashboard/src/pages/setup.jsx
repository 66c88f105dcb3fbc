// The setup wizard: a new platform (the first administrator, then the domain and its DNS
// provider), or a platform restored from its backups (setup_restore.jsx).
import { useState } from "preact/hooks";
import { post } from "../api.js";
import { navigate, useRoute } from "../router.js";
import { useSession } from "../session.js";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { DomainForm } from "./domain_form.jsx";
import { RestoreStep } from "./setup_restore.jsx";

function Steps({ step }) {
  const names = ["Administrator", "Domain", "Done"];
  return (
    <ol class="steps" aria-label="Setup steps">
      {names.map((n, i) => (
        <li key={n} class={i === step ? "current" : i < step ? "done" : ""} aria-current={i === step ? "step" : undefined}>
          {n}
        </li>
      ))}
    </ol>
  );
}

// The one-time setup token comes with the link the server printed (#/setup?token=...); without
// it, the form asks for it.
function AdminStep({ onDone, token }) {
  const form = useForm({ setup_token: token || "", username: "", email: "", display_name: "", password: "", confirm: "" });
  const create = form.submit(async (v) => {
    if (v.password !== v.confirm) {
      form.setErrors({ confirm: "The two passwords differ." });
      return;
    }
    const body = { username: v.username.trim(), email: v.email.trim(), password: v.password, setup_token: v.setup_token.trim() };
    if (v.display_name.trim()) body.display_name = v.display_name.trim();
    await post("/setup", body);
    const session = await post("/session", { username: body.username, password: v.password });
    onDone(session);
  });
  return (
    <form onSubmit={create} noValidate>
      <p>Create the first administrator. You sign in with this account from now on.</p>
      <FormError error={form.errors._form} />
      {(!token || form.errors.setup_token) && (
        <Field
          label="Setup token"
          {...form.bind("setup_token")}
          autocomplete="off"
          hint="Printed by the server when it started, as part of the setup link (also in the file setup-token of its data directory)."
        />
      )}
      <Field label="Username" {...form.bind("username")} autocomplete="username" hint="2 to 32 characters: a letter, then letters, digits, . _ or -" />
      <Field label="Email" type="email" {...form.bind("email")} autocomplete="email" />
      <Field label="Display name (optional)" {...form.bind("display_name")} autocomplete="name" />
      <Field label="Password" type="password" {...form.bind("password")} autocomplete="new-password" hint="At least 8 characters; 15 or more is better. A passphrase works well." />
      <Field label="Password again" type="password" {...form.bind("confirm")} autocomplete="new-password" />
      <Submit busy={form.busy}>Create administrator</Submit>
    </form>
  );
}

export function Setup({ signedIn = false }) {
  const { refresh } = useSession();
  const token = useRoute().query.get("token");
  const [step, setStep] = useState(signedIn ? 1 : 0);
  const [mode, setMode] = useState("new"); // or "restore" (chosen on the first screen)
  const [domain, setDomain] = useState(null);
  const finish = async () => {
    await refresh();
    navigate("/apps", { replace: true });
  };
  return (
    <div class="centered wizard">
      <h1>Set up Homeport</h1>
      {!signedIn && step === 0 && (
        <div class="wizard-choice" role="group" aria-label="How to start">
          {[
            ["new", "Set up a new platform"],
            ["restore", "Restore from a backup"],
          ].map(([m, label]) => (
            <button key={m} type="button" class={`btn${mode === m ? " btn-primary" : ""}`} aria-pressed={mode === m ? "true" : "false"} onClick={() => setMode(m)}>
              {label}
            </button>
          ))}
        </div>
      )}
      {mode === "restore" && <RestoreStep token={token} onBack={() => setMode("new")} />}
      {mode === "new" && <Steps step={step} />}
      {mode === "new" && step === 0 && (
        <section aria-labelledby="step-admin">
          <h2 id="step-admin">1. The first administrator</h2>
          <AdminStep
            token={token}
            onDone={async (session) => {
              if (session.totp_enrolment_required) await finish();
              else setStep(1);
            }}
          />
        </section>
      )}
      {mode === "new" && step === 1 && (
        <section aria-labelledby="step-domain">
          <h2 id="step-domain">2. Your domain</h2>
          <p>
            Homeport keeps the DNS records of your apps in your domain's DNS provider, and gets their certificates.
            Give it the domain and the provider's API key; it checks them before it keeps them.
          </p>
          <DomainForm
            onAdded={(d) => {
              setDomain(d);
              setStep(2);
            }}
          />
          <p>
            <button type="button" class="btn btn-link" onClick={() => setStep(2)}>
              Skip for now
            </button>{" "}
            — apps then live under <code>localhost</code> on this machine until you add a domain.
          </p>
        </section>
      )}
      {mode === "new" && step === 2 && (
        <section aria-labelledby="step-done">
          <h2 id="step-done">Homeport is ready</h2>
          {domain ? (
            <p>
              <strong>{domain.domain}</strong> is {domain.verified_at ? "verified" : "added"}. Apps you install get a name under it and a certificate.
            </p>
          ) : (
            <p>You can add a domain later under Domains.</p>
          )}
          <button type="button" class="btn btn-primary" onClick={finish}>
            Open the dashboard
          </button>
        </section>
      )}
    </div>
  );
}
