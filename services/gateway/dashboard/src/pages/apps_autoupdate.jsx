// Automatic app updates (administrators): the nightly window on the apps page, with the updates
// waiting for approval, and each app's "Update automatically" switch on its page.
import { useState } from "preact/hooks";
import { get, put } from "../api.js";
import { ErrorNote, useAsync } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";

const SETTINGS = "/app-updates/settings";

function WindowForm({ settings, onSaved }) {
  const form = useForm({ enabled: settings.enabled, window_start: settings.window_start, window_end: settings.window_end });
  const [saved, setSaved] = useState(false);
  const save = form.submit(async (v) => {
    setSaved(false);
    await put(SETTINGS, v);
    setSaved(true);
    onSaved();
  });
  const off = !form.values.enabled;
  return (
    <form onSubmit={save} noValidate aria-label="Automatic updates">
      <FormError error={form.errors._form} />
      <Field label="Update apps automatically every night" type="checkbox" {...form.bind("enabled")} />
      <Field label={`From (${settings.time_zone})`} type="time" {...form.bind("window_start")} disabled={off} />
      <Field label="Until" type="time" hint="Before the start: the window spans midnight." {...form.bind("window_end")} disabled={off} />
      {saved && (
        <p class="ok-note" role="status">
          Saved.
        </p>
      )}
      <Submit busy={form.busy}>Save</Submit>
    </form>
  );
}

/** The window and the updates that wait for an administrator (the apps page). */
export function AutoUpdatePanel() {
  const state = useAsync(() => Promise.all([get(SETTINGS), get("/app-updates/pending")]), []);
  if (state.error) return <ErrorNote error={state.error} retry={state.reload} />;
  if (!state.data) return null;
  const [settings, pending] = state.data;
  return (
    <section class="panel" aria-labelledby="autoupdate-head">
      <h2 id="autoupdate-head">Automatic updates</h2>
      <p class="hint">One app at a time, a snapshot first; a failed update is rolled back.</p>
      <WindowForm settings={settings} onSaved={state.reload} />
      {pending.items.length > 0 && (
        <>
          <h3>Waiting for your approval</h3>
          <ul>
            {pending.items.map((p) => (
              <li key={p.app_id}>
                <a href={`#/apps/${p.app_id}`}>{p.location}</a> {p.version} → {p.available_version}
              </li>
            ))}
          </ul>
        </>
      )}
    </section>
  );
}

/** The app page's "Update automatically" switch. */
export function AutoUpdateToggle({ app }) {
  const state = useAsync(() => get(SETTINGS), [app.app_id]);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  if (!state.data) return <ErrorNote error={state.error} retry={state.reload} />;
  const on = !state.data.opted_out.includes(app.app_id);
  const change = async (e) => {
    setBusy(true);
    setError(null);
    try {
      await put(`/apps/${app.app_id}/auto-update`, { enabled: e.currentTarget.checked });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
      state.reload();
    }
  };
  return (
    <div class="field">
      <label>
        <input type="checkbox" checked={on} disabled={busy} onChange={change} /> Update automatically
      </label>
      <ErrorNote error={error} />
    </div>
  );
}
