// The setup wizard's "Restore from a backup": where the backups are, the key, "Check" (which
// backup it is), then "Restore": the platform restarts with the backup's data; this page waits
// until it answers again, set up, and sends the administrator to sign in with the old account.
import { useEffect, useState } from "preact/hooks";
import { get, post } from "../api.js";
import { navigate } from "../router.js";
import { formatTime } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { keyOf } from "./backups.jsx";

const POLL_MS = 2000;
const KINDS = { local: "A directory (a mounted disk)", s3: "S3-compatible storage" };

function body(v, extra) {
  let b;
  if (v.kind === "local") b = { kind: "local", path: v.path.trim() };
  else {
    b = { kind: "s3", bucket: v.bucket.trim() };
    for (const k of ["endpoint_url", "region", "prefix", "access_key_id"]) if (v[k].trim()) b[k] = v[k].trim();
    if (v.secret_access_key) b.secret_access_key = v.secret_access_key;
  }
  return { ...b, identity: v.identity, setup_token: v.setup_token.trim(), ...extra };
}

function Waiting({ checked, onFailed }) {
  const [done, setDone] = useState(false);
  useEffect(() => {
    let stop = false;
    let timer = 0;
    const look = async () => {
      try {
        const state = await get("/setup/restore");
        if (stop) return;
        if (state.setup_done) {
          setDone(true);
          return;
        }
        if (state.failed && !state.pending) {
          onFailed(state.failed);
          return;
        }
      } catch {
        // the platform is restarting: it does not answer for a while
      }
      if (!stop) timer = setTimeout(look, POLL_MS);
    };
    timer = setTimeout(look, POLL_MS);
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, []);
  if (done) {
    return (
      <section aria-labelledby="restore-done">
        <h2 id="restore-done">Restored: sign in with your old account</h2>
        <p>The platform is back as it was at {formatTime(checked.time)}. Apps are rebuilt from their backups in the background.</p>
        <button type="button" class="btn btn-primary" onClick={() => navigate("/login", { replace: true })}>
          Sign in
        </button>
      </section>
    );
  }
  return (
    <section aria-labelledby="restore-running" aria-busy="true">
      <h2 id="restore-running">Restoring…</h2>
      <p role="status">
        Homeport stops, restores the backup of {formatTime(checked.time)} and starts again. This page waits for it; the dashboard does not answer
        meanwhile.
      </p>
    </section>
  );
}

export function RestoreStep({ token, onBack }) {
  const form = useForm({
    setup_token: token || "",
    kind: "local",
    path: "",
    endpoint_url: "",
    region: "",
    bucket: "",
    prefix: "",
    access_key_id: "",
    secret_access_key: "",
    identity: "",
  });
  const [checked, setChecked] = useState(null);
  const [started, setStarted] = useState(false);
  const { values } = form;
  const change = (name) => ({
    ...form.bind(name),
    onValue: (x) => {
      setChecked(null);
      form.set(name, name === "identity" ? keyOf(x) : x);
    },
  });
  const check = form.submit(async (v) => {
    setChecked(await post("/setup/restore", body(v, { check_only: true })));
  });
  const restore = form.submit(async (v) => {
    const answer = await post("/setup/restore", body(v, { snapshot_id: checked.snapshot_id }));
    setChecked(answer);
    setStarted(true);
  });
  const load = async (ev) => {
    const file = ev.currentTarget.files && ev.currentTarget.files[0];
    if (file) {
      setChecked(null);
      form.set("identity", keyOf(await file.text()));
    }
  };
  if (started) {
    return (
      <Waiting
        checked={checked}
        onFailed={(message) => {
          setStarted(false);
          setChecked(null);
          form.setErrors({ _form: `The restore failed and nothing changed: ${message}` });
        }}
      />
    );
  }
  return (
    <section aria-labelledby="step-restore">
      <h2 id="step-restore">Restore from a backup</h2>
      <p>Bring back a platform from its backups: users, groups, domains, certificates and every app with its data.</p>
      <form onSubmit={checked ? restore : check} noValidate aria-label="Restore from a backup">
        <FormError error={form.errors._form} />
        {(!token || form.errors.setup_token) && (
          <Field
            label="Setup token"
            {...form.bind("setup_token")}
            autocomplete="off"
            hint="Printed by the server when it started, as part of the setup link (also in the file setup-token of its data directory)."
          />
        )}
        <Field label="Where the backups are" type="select" {...change("kind")}>
          {Object.entries(KINDS).map(([k, label]) => (
            <option key={k} value={k}>
              {label}
            </option>
          ))}
        </Field>
        {values.kind === "local" ? (
          <Field label="Directory" {...change("path")} placeholder="/mnt/backup-disk/homeport" autocomplete="off" spellcheck={false} hint="An absolute path on the server." />
        ) : (
          <>
            <Field label="Endpoint URL" {...change("endpoint_url")} placeholder="https://s3.example.com" autocomplete="off" hint="Empty for Amazon S3." />
            <Field label="Region" {...change("region")} autocomplete="off" />
            <Field label="Bucket" {...change("bucket")} autocomplete="off" spellcheck={false} />
            <Field label="Prefix" {...change("prefix")} autocomplete="off" spellcheck={false} hint="Optional: a folder in the bucket." />
            <Field label="Access key id" {...change("access_key_id")} autocomplete="off" spellcheck={false} />
            <Field label="Secret access key" type="password" {...change("secret_access_key")} autocomplete="new-password" />
          </>
        )}
        <Field
          label="Backup key"
          type="password"
          {...change("identity")}
          autocomplete="off"
          spellcheck={false}
          placeholder="AGE-SECRET-KEY-1…"
          hint="Paste it, or load the key file downloaded when backups were set up. It is used for this once and not kept."
        />
        <div class="field file-load">
          <label>
            Load the key file <input type="file" accept=".txt,text/plain" onChange={load} />
          </label>
        </div>
        {checked && (
          <p class="ok-note" role="status">
            Backup of {formatTime(checked.time)} with {checked.apps} {checked.apps === 1 ? "app" : "apps"}.
          </p>
        )}
        <div class="wizard-actions">
          <button type="button" class="btn btn-link" onClick={onBack}>
            Back
          </button>
          <Submit busy={form.busy}>{checked ? "Restore" : "Check"}</Submit>
        </div>
      </form>
    </section>
  );
}
