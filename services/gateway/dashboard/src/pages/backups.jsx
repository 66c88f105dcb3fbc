// Backups (administrators): where they go, the key (shown once), schedule, retention, the list
// with "Back up now", verify, restore and clone. The app page lists one app's backups too.
import { useEffect, useState } from "preact/hooks";
import { get, post, put, withQuery } from "../api.js";
import { Dialog, ErrorNote, Loaded, ListTable, PageHead, TaskProgress, formatBytes, formatTime, useAsync } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { Stale, usePolled, useFirstFocus } from "./apps_common.jsx";

const POLL_MS = 15000;
const SECRET_SHOWN = "••••";
const KEY_LINE = /AGE-SECRET-KEY-1[0-9A-Z]+/;
const KINDS = { local: "A directory (a mounted disk)", s3: "S3-compatible storage" };

/** The private key out of pasted or uploaded text (a key file has comments around it). */
export function keyOf(text) {
  const m = String(text || "").toUpperCase().match(KEY_LINE);
  return m ? m[0] : String(text || "").trim();
}

const BACKUP_KINDS = { platform: "Platform", mail: "Mail" };
const kindText = (b) => BACKUP_KINDS[b.kind] || b.location || b.manifest_id || "App";
const reasonText = { backup: "backup", update: "before an update" };

// -- target -----------------------------------------------------------------------------------

function TargetForm({ target, onSaved }) {
  const t = target || {};
  const form = useForm({
    kind: t.kind || "local",
    path: t.path || "",
    endpoint_url: t.endpoint_url || "",
    region: t.region || "",
    bucket: t.bucket || "",
    prefix: t.prefix || "",
    access_key_id: t.access_key_id || "",
    secret_access_key: "",
  });
  const [saved, setSaved] = useState(false);
  const { values } = form;
  const kept = t.secret_set || t.secret_access_key;
  const save = form.submit(async (v) => {
    setSaved(false);
    let body;
    if (v.kind === "local") body = { kind: "local", path: v.path.trim() };
    else {
      body = { kind: "s3", bucket: v.bucket.trim() };
      for (const k of ["endpoint_url", "region", "prefix", "access_key_id"]) if (v[k].trim()) body[k] = v[k].trim();
      if (v.secret_access_key) body.secret_access_key = v.secret_access_key;
    }
    try {
      await put("/backups/target", body);
    } catch (e) {
      // a failed check concerns the target as a whole (`kind`); of a directory, that is its path
      // (of S3 storage, any of its settings: said above the form)
      if (e.field === "kind") e.field = v.kind === "local" ? "path" : null;
      throw e;
    }
    form.set("secret_access_key", "");
    setSaved(true);
    onSaved();
  });
  return (
    <form onSubmit={save} noValidate aria-label="Where backups go">
      <FormError error={form.errors._form} />
      <Field label="Where" type="select" {...form.bind("kind")}>
        {Object.entries(KINDS).map(([k, label]) => (
          <option key={k} value={k}>
            {label}
          </option>
        ))}
      </Field>
      {values.kind === "local" ? (
        <Field label="Directory" {...form.bind("path")} placeholder="/mnt/backup-disk/homeport" autocomplete="off" spellcheck={false} hint="An absolute path on the server." />
      ) : (
        <>
          <Field label="Endpoint URL" {...form.bind("endpoint_url")} placeholder="https://s3.example.com" autocomplete="off" hint="Empty for Amazon S3." />
          <Field label="Region" {...form.bind("region")} autocomplete="off" />
          <Field label="Bucket" {...form.bind("bucket")} autocomplete="off" spellcheck={false} />
          <Field label="Prefix" {...form.bind("prefix")} autocomplete="off" spellcheck={false} hint="Optional: a folder in the bucket." />
          <Field label="Access key id" {...form.bind("access_key_id")} autocomplete="off" spellcheck={false} />
          <Field
            label="Secret access key"
            type="password"
            {...form.bind("secret_access_key")}
            autocomplete="new-password"
            placeholder={kept ? SECRET_SHOWN : ""}
            hint={kept ? "Kept sealed and never shown. Leave empty to keep it." : "Kept sealed and never shown."}
          />
        </>
      )}
      {saved && (
        <p class="ok-note" role="status">
          Checked and kept: a test file was written there, read back and deleted.
        </p>
      )}
      <Submit busy={form.busy}>Check and save</Submit>
    </form>
  );
}

function TargetText({ target }) {
  if (!target) return <p class="notice">Backups have nowhere to go yet: snapshots stay on this server's disk only.</p>;
  if (target.kind === "local")
    return (
      <p>
        Backups go to <code>{target.path}</code> on this server.
      </p>
    );
  return (
    <p>
      Backups go to the S3 bucket <code>{target.bucket}</code>
      {target.prefix ? <> (prefix <code>{target.prefix}</code>)</> : null}
      {target.endpoint_url ? <> at {target.endpoint_url}</> : null}. Secret: {SECRET_SHOWN}
    </p>
  );
}

// -- key --------------------------------------------------------------------------------------

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function keyFile(identity, recipients) {
  return [
    "# Homeport backup key: keep it safe and away from the server.",
    "# Without it no backup can be restored; with it anyone can read them.",
    `# created: ${new Date().toISOString()}`,
    ...recipients.map((r) => `# public key: ${r}`),
    identity,
    "",
  ].join("\n");
}

/** The private key, shown this once: download, print, and "I have stored it" before leaving. */
function KeyShown({ answer, onDone }) {
  const [stored, setStored] = useState(false);
  const recipients = answer.recipients || [];
  useEffect(() => {
    if (stored) return undefined;
    const warn = (ev) => {
      ev.preventDefault();
      ev.returnValue = "";
    };
    window.addEventListener("beforeunload", warn);
    return () => window.removeEventListener("beforeunload", warn);
  }, [stored]);
  return (
    <div class="stack key-shown print-key" role="region" aria-label="Your backup key">
      <p>
        <strong>This is your backup key. It is shown only now.</strong> Homeport keeps only the public part: without this key no backup can
        be restored, and with it anyone can read them. Download it and print it, and keep both away from this server.
      </p>
      <code class="secret key" data-testid="backup-key">
        {answer.identity}
      </code>
      {recipients.length > 0 && (
        <p class="hint">
          Public key{recipients.length > 1 ? "s" : ""}: {recipients.join(", ")}
        </p>
      )}
      <div class="button-row no-print">
        <button type="button" class="btn btn-primary" onClick={() => download("homeport-backup-key.txt", keyFile(answer.identity, recipients))}>
          Download
        </button>
        <button type="button" class="btn btn-secondary" onClick={() => window.print()}>
          Print
        </button>
      </div>
      <div class="no-print">
        <Field label="I have stored the key" type="checkbox" name="stored" value={stored} onValue={setStored} />
        <button type="button" class="btn btn-secondary" disabled={!stored} onClick={onDone}>
          Done
        </button>
      </div>
    </div>
  );
}

function KeyForm({ onAnswer, again }) {
  const form = useForm({ second_recipient: "", passphrase: "" });
  const make = form.submit(async (v) => {
    const body = {};
    if (v.second_recipient.trim()) body.second_recipient = v.second_recipient.trim();
    if (v.passphrase) body.passphrase = v.passphrase;
    onAnswer(await post("/backups/key", body));
  });
  return (
    <form onSubmit={make} noValidate aria-label="Make the backup key">
      <FormError error={form.errors._form} />
      {again && <p class="notice">A key is set up. A new one applies to new backups; keep the old key for the backups made before.</p>}
      <details class="more">
        <summary>Options</summary>
        <Field
          label="Second public key (optional)"
          {...form.bind("second_recipient")}
          placeholder="age1…"
          autocomplete="off"
          spellcheck={false}
          hint="Backups also open with this age key's private part (e.g. one a relative keeps)."
        />
        <Field
          label="Passphrase for a copy on the target (optional)"
          type="password"
          {...form.bind("passphrase")}
          autocomplete="new-password"
          hint="12 characters or more: a copy of the key, encrypted with it, is stored with the backups."
        />
      </details>
      <Submit busy={form.busy}>{again ? "Make a new key" : "Generate the key"}</Submit>
    </form>
  );
}

function KeyPanel({ recipients, onChanged }) {
  const [answer, setAnswer] = useState(null);
  return (
    <section class="panel" aria-labelledby="key-head">
      <h2 id="key-head">Key</h2>
      {answer ? (
        <KeyShown
          answer={answer}
          onDone={() => {
            setAnswer(null);
            onChanged();
          }}
        />
      ) : (
        <>
          {recipients.length ? (
            <p>
              Backups are encrypted to <code class="secret">{recipients[0]}</code>
              {recipients.length > 1 ? ` and ${recipients.length - 1} more` : ""}. This server cannot read them.
            </p>
          ) : (
            <p class="notice">No key yet: backups are encrypted to a key only you keep. Make it now.</p>
          )}
          <KeyForm again={recipients.length > 0} onAnswer={setAnswer} />
        </>
      )}
    </section>
  );
}

// -- schedule and retention ---------------------------------------------------------------------

function ScheduleForm({ schedule, onSaved }) {
  const s = schedule || {};
  const form = useForm({ enabled: s.enabled !== false, time: s.time || "03:30" });
  const [saved, setSaved] = useState(false);
  const save = form.submit(async (v) => {
    setSaved(false);
    await put("/backups/schedule", { enabled: v.enabled, time: v.time });
    setSaved(true);
    onSaved();
  });
  return (
    <form onSubmit={save} noValidate aria-label="Schedule">
      <FormError error={form.errors._form} />
      <Field label="Back up every day" type="checkbox" {...form.bind("enabled")} />
      <Field label="At (server time)" type="time" {...form.bind("time")} disabled={!form.values.enabled} />
      {saved && (
        <p class="ok-note" role="status">
          Saved.
        </p>
      )}
      <Submit busy={form.busy}>Save schedule</Submit>
    </form>
  );
}

const KEEP = [
  ["last", "Keep the last"],
  ["daily", "Daily backups kept"],
  ["weekly", "Weekly backups kept"],
  ["monthly", "Monthly backups kept"],
];

function RetentionForm({ retention, onSaved }) {
  const r = retention || {};
  const form = useForm(Object.fromEntries(KEEP.map(([k]) => [k, String(r[k] ?? "")])));
  const [saved, setSaved] = useState(false);
  const save = form.submit(async (v) => {
    setSaved(false);
    const body = {};
    const bad = {};
    for (const [k] of KEEP) {
      const text = String(v[k]).trim();
      if (!/^[0-9]{1,4}$/.test(text)) bad[k] = "A whole number, 0 or more.";
      else body[k] = Number(text);
    }
    if (Object.keys(bad).length) {
      form.setErrors(bad);
      return;
    }
    await put("/backups/retention", body);
    setSaved(true);
    onSaved();
  });
  return (
    <form onSubmit={save} noValidate aria-label="Retention">
      <FormError error={form.errors._form} />
      {KEEP.map(([k, label]) => (
        <Field key={k} label={label} type="number" min="0" step="1" inputMode="numeric" {...form.bind(k)} />
      ))}
      {saved && (
        <p class="ok-note" role="status">
          Saved.
        </p>
      )}
      <Submit busy={form.busy}>Save retention</Submit>
    </form>
  );
}

// -- one backup: restore, clone, verify --------------------------------------------------------

/** A key pasted or read from a file (the downloaded key file). */
function KeyInput({ form, required = true }) {
  const load = async (ev) => {
    const file = ev.currentTarget.files && ev.currentTarget.files[0];
    if (file) form.set("identity", keyOf(await file.text()));
  };
  return (
    <>
      <Field
        label={required ? "Backup key" : "Backup key (optional)"}
        type="password"
        {...form.bind("identity")}
        onValue={(x) => form.set("identity", keyOf(x))}
        autocomplete="off"
        spellcheck={false}
        placeholder="AGE-SECRET-KEY-1…"
        hint="Paste it, or load the key file. It is used for this once and not kept."
      />
      <div class="field file-load">
        <label>
          Load the key file <input type="file" accept=".txt,text/plain" onChange={load} />
        </label>
      </div>
    </>
  );
}

function BackupDialog({ what, backup, onClose, onStarted }) {
  const names = { restore: "Restore", clone: "Clone to a new location", verify: "Verify" };
  const form = useForm({ identity: "", location: "", domain: "" });
  const focus = useFirstFocus();
  const label = `${kindText(backup)} of ${formatTime(backup.time)}`;
  const go = form.submit(async (v) => {
    const body = {};
    if (v.identity) body.identity = v.identity;
    if (what === "clone") {
      body.location = v.location.trim();
      if (v.domain.trim()) body.domain = v.domain.trim();
    }
    const started = await post(`/backups/${encodeURIComponent(backup.snapshot_id)}/${what}`, body);
    const title = { restore: `Restoring ${label}`, clone: `Cloning ${label} to ${body.location}`, verify: `Verifying ${label}` }[what];
    onStarted(started.task_id, title);
    onClose();
  });
  return (
    <Dialog title={`${names[what]}: ${label}`} open onClose={onClose}>
      <form ref={focus} onSubmit={go} noValidate>
        <FormError error={form.errors._form} />
        {what === "restore" && (
          <p>
            {kindText(backup)} goes back to this backup (version {backup.version}): its data changed since then is replaced.
          </p>
        )}
        {what === "clone" && <p>A new app with this backup's data, at its own address.</p>}
        {what === "verify" && <p>Without the key every piece is checked to be there; with it, every piece is decrypted and checked.</p>}
        <KeyInput form={form} required={what !== "verify"} />
        {what === "clone" && (
          <>
            <Field label="Location" {...form.bind("location")} onValue={(x) => form.set("location", x.trim().toLowerCase())} autocomplete="off" spellcheck={false} />
            <Field label="Domain (optional)" {...form.bind("domain")} autocomplete="off" spellcheck={false} />
          </>
        )}
        <Submit busy={form.busy} kind={what === "restore" ? "danger" : "primary"}>
          {names[what]}
        </Submit>
      </form>
    </Dialog>
  );
}

/** The tasks this page started, each with its progress bar. */
export function useStarted() {
  const [tasks, setTasks] = useState([]);
  const start = (id, title) => setTasks((t) => (t.some((x) => x.id === id) ? t : [...t, { id, title }]));
  const dismiss = (id) => setTasks((t) => t.filter((x) => x.id !== id));
  return { tasks, start, dismiss };
}

function StartedTasks({ tasks, dismiss, onEnded }) {
  if (!tasks.length) return null;
  return (
    <section class="panel tasks" aria-label="Backup operations">
      {tasks.map((t) => (
        <div class="task-row" key={t.id}>
          <TaskProgress taskId={t.id} title={t.title} onDone={onEnded} />
          <button type="button" class="btn btn-ghost" onClick={() => dismiss(t.id)}>
            Dismiss<span class="sr-only"> {t.title}</span>
          </button>
        </div>
      ))}
    </section>
  );
}

/** A list of backups with Verify, and Restore / Clone for app backups. */
function BackupList({ items, onStarted, showApp = true, installed }) {
  const [dialog, setDialog] = useState(null);
  if (!items.length) return <p class="muted">No backups yet.</p>;
  const columns = [...(showApp ? ["What"] : []), "Taken", "Why", "Size", "New data"];
  return (
    <>
      <ListTable caption="Backups, newest first" columns={columns} actions kind="backups">
        {items.map((b) => {
          const label = `${kindText(b)} of ${formatTime(b.time)}`;
          const canRestore = b.kind === "app" && (installed ? installed(b.app_id) : true);
          return (
            <tr key={b.snapshot_id} data-snapshot={b.snapshot_id}>
              {showApp && (
                <td data-label="What">
                  {kindText(b)}
                  {b.kind === "app" && b.version && <span class="muted"> {b.version}</span>}
                </td>
              )}
              <td data-label="Taken">{formatTime(b.time)}</td>
              <td data-label="Why">{reasonText[b.reason] || b.reason || "backup"}</td>
              <td data-label="Size">{formatBytes(b.size_bytes)}</td>
              <td data-label="New data">{formatBytes(b.new_bytes)}</td>
              <td data-label="" class="actions">
                <div class="row-actions">
                  <button type="button" class="btn btn-secondary" aria-label={`Verify ${label}`} onClick={() => setDialog({ what: "verify", b })}>
                    Verify
                  </button>
                  {canRestore && (
                    <button type="button" class="btn btn-secondary" aria-label={`Restore ${label}`} onClick={() => setDialog({ what: "restore", b })}>
                      Restore
                    </button>
                  )}
                  {b.kind === "app" && (
                    <button type="button" class="btn btn-secondary" aria-label={`Clone ${label} to a new location`} onClick={() => setDialog({ what: "clone", b })}>
                      Clone
                    </button>
                  )}
                </div>
              </td>
            </tr>
          );
        })}
      </ListTable>
      {dialog && <BackupDialog what={dialog.what} backup={dialog.b} onClose={() => setDialog(null)} onStarted={onStarted} />}
    </>
  );
}

function BackUpNow({ appId, onStarted, disabled, label = "Back up now" }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const go = async () => {
    setBusy(true);
    setError(null);
    try {
      const started = await post("/backups", appId ? { app_id: appId } : {});
      onStarted(started.task_id, appId ? "Backing up this app" : "Backing up everything");
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" class="btn btn-primary" onClick={go} disabled={busy || disabled}>
        {busy ? "Starting…" : label}
      </button>
      <ErrorNote error={error} />
    </>
  );
}

// -- the pages ----------------------------------------------------------------------------------

export function Backups() {
  const settings = useAsync(() => get("/backups/settings"), []);
  const [tick, setTick] = useState(0);
  const list = usePolled(() => get("/backups"), POLL_MS, [tick]);
  const apps = useAsync(() => get("/apps"), [tick]);
  const { tasks, start, dismiss } = useStarted();
  const reload = () => {
    settings.reload();
    setTick((n) => n + 1);
  };
  const ready = settings.data && settings.data.target && (settings.data.recipients || []).length > 0;
  const installed = (id) => !apps.data || apps.data.items.some((a) => a.app_id === id);
  return (
    <div class="backups-page">
      <PageHead title="Backups">
        <BackUpNow onStarted={start} disabled={!ready} />
      </PageHead>
      <StartedTasks tasks={tasks} dismiss={dismiss} onEnded={reload} />
      <Loaded state={settings} what="Loading the backup settings">
        {(s) => (
          <>
            {!ready && <p class="hint">Set where backups go and make the key to back up.</p>}
            <div class="grid-2">
              <section class="panel" aria-labelledby="target-head">
                <h2 id="target-head">Where backups go</h2>
                <TargetText target={s.target} />
                <TargetForm target={s.target} onSaved={reload} />
              </section>
              <KeyPanel recipients={s.recipients || []} onChanged={reload} />
              <section class="panel" aria-labelledby="schedule-head">
                <h2 id="schedule-head">Schedule</h2>
                <ScheduleForm schedule={s.schedule} onSaved={reload} />
              </section>
              <section class="panel" aria-labelledby="retention-head">
                <h2 id="retention-head">Retention</h2>
                <RetentionForm retention={s.retention} onSaved={reload} />
              </section>
            </div>
          </>
        )}
      </Loaded>
      <section class="panel" aria-labelledby="list-head">
        <h2 id="list-head">Backups</h2>
        <Stale error={list.stale} />
        <Loaded state={list} what="Loading the backups">
          {({ items }) => <BackupList items={items} onStarted={start} installed={installed} />}
        </Loaded>
      </section>
    </div>
  );
}

/** The app page's section: this app's backups, "Back up now" for it, Restore. */
export function AppBackups({ app, version, onStarted }) {
  const list = usePolled(() => get(withQuery(`/apps/${app.app_id}/backups`, {})), POLL_MS, [app.app_id, version]);
  return (
    <section class="panel" aria-labelledby="backups-head">
      <div class="section-head">
        <h2 id="backups-head">Backups</h2>
        <BackUpNow appId={app.app_id} onStarted={onStarted} disabled={app.state !== "installed"} label="Back up this app now" />
      </div>
      <Stale error={list.stale} />
      {list.error && list.error.status === 503 ? (
        <p class="muted">The backup service is not answering right now.</p>
      ) : (
        <Loaded state={list} what="Loading the backups">
          {({ items }) => <BackupList items={items} onStarted={onStarted} showApp={false} />}
        </Loaded>
      )}
    </section>
  );
}
