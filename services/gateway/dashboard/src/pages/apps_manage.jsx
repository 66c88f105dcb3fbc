// What an administrator does to an installed app: configure, update, clone, snapshots and
// restore, uninstall. Each operation answers a task; the app page follows its progress.
import { useState } from "preact/hooks";
import { del, get, patch, post } from "../api.js";
import { navigate } from "../router.js";
import { Dialog, ErrorNote, Loaded, TaskProgress, formatBytes, formatTime, useAsync, ListTable } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import {
  Availability,
  Changelog,
  DomainSelect,
  MIB,
  PortFields,
  Stale,
  WhoCanOpen,
  accessBody,
  accessMode,
  act,
  eventually,
  memoryBytes,
  parseEnv,
  platformDomain,
  portValues,
  portsBody,
  useAvailability,
  useFirstFocus,
  usePolled,
} from "./apps_common.jsx";

const sameList = (a, b) => a.length === b.length && a.every((x) => b.includes(x));

// -- configure --------------------------------------------------------------------------------

const valueKey = (name) => `env.${name}`; // the API names a variable's error env.<NAME>
const removeKey = (name) => `remove.${name}`;

/** The env part of a PATCH body: the variables given a value, those to remove (null), the new
 * lines; the API keeps every variable not named. */
function envChanges(v, names) {
  const env = {};
  for (const name of names) {
    if (v[removeKey(name)]) env[name] = null;
    else if (v[valueKey(name)] !== "") env[name] = v[valueKey(name)];
  }
  return { ...env, ...parseEnv(v.env) };
}

/** The changes of a configure form as a PATCH body (only what differs from the app). */
function changes(v, initial, app, singleUser) {
  const body = {};
  if (v.location !== app.location) body.location = v.location;
  if (singleUser) {
    if (v.user_id !== initial.user_id) body.access = { all_users: false, user_ids: [v.user_id] };
  } else if (
    v.access !== initial.access ||
    (v.access === "groups" && !sameList(v.groups, initial.groups)) ||
    (v.access === "people" && !sameList(v.people, initial.people))
  ) {
    body.access = accessBody(v.access, v.groups, v.people);
  }
  const memory = memoryBytes(v.memory_bytes);
  if (memory !== app.memory_bytes) body.memory_bytes = memory;
  const env = envChanges(v, app.env_names);
  if (Object.keys(env).length) body.env = env;
  // the ports changed (the API keeps the others); an emptied field keeps its port
  Object.assign(body, portsBody(v, app.ports, (p, port) => port !== p.host_port));
  return body;
}

/** The app's variables by name (a new value, or removal), then new ones as NAME=value lines. */
function EnvFields({ names, form }) {
  const { values } = form;
  return (
    <fieldset class="env-vars">
      <legend>Environment variables</legend>
      {names.length ? (
        <>
          <p class="hint">Values are secret and never shown. Leave a value empty to keep it as it is: only the variables you change or remove change.</p>
          {names.map((name) => (
            <div class="env-row" key={name}>
              <Field
                label={name}
                {...form.bind(valueKey(name))}
                placeholder="unchanged"
                autocomplete="off"
                spellcheck={false}
                disabled={values[removeKey(name)]}
              />
              <Field
                label={
                  <>
                    Remove<span class="sr-only"> {name}</span>
                  </>
                }
                type="checkbox"
                {...form.bind(removeKey(name))}
              />
            </div>
          ))}
        </>
      ) : (
        <p class="hint">The app has no variables of its own.</p>
      )}
      <Field
        label="Add variables"
        type="textarea"
        {...form.bind("env")}
        spellcheck={false}
        placeholder={"NAME=value\nOTHER=value"}
        hint="One NAME=value a line. A name the app already has gets the new value."
      />
    </fieldset>
  );
}

function ConfigureForm({ app, singleUser, groups, users, titles, onStarted }) {
  const initial = {
    location: app.location,
    access: accessMode(app.access),
    groups: app.access?.groups || [],
    people: app.access?.user_ids || [],
    user_id: app.access?.user_ids?.[0] || users[0]?.user_id || "",
    memory_bytes: String(Math.round(app.memory_bytes / MIB)),
    env: "",
    ...portValues(app.ports, (p) => p.host_port),
  };
  for (const name of app.env_names) {
    initial[valueKey(name)] = "";
    initial[removeKey(name)] = false;
  }
  const form = useForm(initial);
  const focus = useFirstFocus();
  const { values } = form;
  const answer = useAvailability(values.location, app.domain, titles, app.app_id);

  const save = form.submit(async (v) => {
    let body;
    try {
      body = changes(v, initial, app, singleUser);
    } catch (e) {
      form.setErrors({ [e.field || (/memory/i.test(e.message) ? "memory_bytes" : "env")]: e.message });
      return;
    }
    if (!Object.keys(body).length) {
      form.setErrors({ _form: "Nothing changed." });
      return;
    }
    const started = await patch(`/apps/${app.app_id}`, body);
    onStarted(started.task_id, `Configuring ${app.location}`);
  });

  return (
    <form ref={focus} onSubmit={save} noValidate>
      <FormError error={form.errors._form} />
      <div class="field-group">
        <Field
          label="Location"
          {...form.bind("location")}
          onValue={(x) => form.set("location", x.trim().toLowerCase())}
          autocomplete="off"
          spellcheck={false}
          hint={`The app's address: ${values.location || "<location>"}.${app.domain}`}
        />
        {values.location !== app.location && <Availability answer={answer} />}
      </div>
      <WhoCanOpen form={form} single={singleUser} users={users} groups={groups} />
      <Field label="Memory (MiB)" type="number" min="32" step="1" inputMode="numeric" {...form.bind("memory_bytes")} />
      <EnvFields names={app.env_names} form={form} />
      <PortFields ports={app.ports} form={form} hint={(p) => `Now ${p.host_port}.`} />
      <Submit busy={form.busy}>Save</Submit>
    </form>
  );
}

export function ConfigureDialog({ open, onClose, ...props }) {
  return (
    <Dialog title={`Configure ${props.app.location}`} open={open} onClose={onClose}>
      {open && (
        <ConfigureForm
          {...props}
          onStarted={(taskId, title) => {
            props.onStarted(taskId, title);
            onClose();
          }}
        />
      )}
    </Dialog>
  );
}

// -- update -----------------------------------------------------------------------------------

function UpdateForm({ app, manifest, onStarted }) {
  // the catalog lists versions oldest first; one no longer listed may go to any (the API refuses older)
  const all = manifest.versions || [manifest.version];
  const at = all.indexOf(app.version);
  const newer = at >= 0 ? all.slice(at + 1) : all;
  const form = useForm({ version: newer[newer.length - 1] || "" });
  const focus = useFirstFocus();
  if (!newer.length)
    return (
      <p class="ok-note" role="status">
        {app.version} is the newest version of {manifest.title}.
      </p>
    );
  const between = newer.slice(0, newer.indexOf(form.values.version) + 1).reverse();
  const update = form.submit(async (v) => {
    const started = await post(`/apps/${app.app_id}/update`, { version: v.version });
    onStarted(started.task_id, `Updating ${app.location} to ${v.version}`);
  });
  return (
    <form ref={focus} onSubmit={update} noValidate>
      <FormError error={form.errors._form} />
      <p>
        Installed: <strong>{app.version}</strong>. A snapshot of the app's data is taken before it is updated.
      </p>
      <Field label="Version" type="select" {...form.bind("version")}>
        {[...newer].reverse().map((v, i) => (
          <option key={v} value={v}>
            {i === 0 ? `${v} (newest)` : v}
          </option>
        ))}
      </Field>
      <section aria-labelledby="update-changes">
        <h3 id="update-changes">
          Changes since {app.version}
        </h3>
        <Changelog manifestId={app.manifest_id} versions={between} level={4} />
      </section>
      <Submit busy={form.busy}>Update</Submit>
    </form>
  );
}

export function UpdateDialog({ app, open, onClose, onStarted }) {
  const catalog = useAsync(() => (open ? get(`/catalog/${encodeURIComponent(app.manifest_id)}`) : Promise.resolve(null)), [open, app.manifest_id]);
  return (
    <Dialog title={`Update ${app.location}`} open={open} onClose={onClose} wide>
      {open && (
        <Loaded state={catalog} what="Loading the versions">
          {(manifest) => (
            <UpdateForm
              app={app}
              manifest={manifest}
              onStarted={(taskId, title) => {
                onStarted(taskId, title);
                onClose();
              }}
            />
          )}
        </Loaded>
      )}
    </Dialog>
  );
}

// -- clone ------------------------------------------------------------------------------------

function CloneForm({ app, domains, platform, titles, onCloned }) {
  const form = useForm({ location: "", domain: "", ...portValues(app.ports, () => "") });
  const focus = useFirstFocus();
  const domain = form.values.domain || platform;
  const answer = useAvailability(form.values.location, domain, titles);
  const clone = form.submit(async (v) => {
    let ports;
    try {
      ports = portsBody(v, app.ports); // an empty one: the app's default port, if it has one
    } catch (e) {
      form.setErrors({ [e.field]: e.message });
      return;
    }
    const body = { location: v.location, ...ports };
    if (v.domain) body.domain = v.domain;
    const started = await post(`/apps/${app.app_id}/clone`, body);
    onCloned({ ...started, address: `${v.location}.${domain}` });
  });
  return (
    <form ref={focus} onSubmit={clone} noValidate>
      <FormError error={form.errors._form} />
      <p>A new app with a copy of {app.location}'s data, at its own address.</p>
      <div class="field-group">
        <Field
          label="Location"
          {...form.bind("location")}
          onValue={(x) => form.set("location", x.trim().toLowerCase())}
          autocomplete="off"
          spellcheck={false}
          hint={`The copy's address: ${form.values.location || "<location>"}.${domain}`}
        />
        <Availability answer={answer} />
      </div>
      <DomainSelect bind={form.bind("domain")} domains={domains} platform={platform} />
      <PortFields
        ports={app.ports}
        form={form}
        intro="The copy needs ports of its own. Leave one empty for the app's suggested port."
        hint={(p) => `${app.location} has ${p.host_port}.`}
      />
      <Submit busy={form.busy}>Clone</Submit>
    </form>
  );
}

function Cloning({ app_id, task_id, address, onClose }) {
  const [url, setUrl] = useState(null);
  const [ended, setEnded] = useState(null);
  const finished = (state) => {
    setEnded(state);
    if (state === "succeeded") get(`/apps/${app_id}`).then((a) => setUrl(a.url), () => {});
  };
  return (
    <div class="app-stack">
      <TaskProgress taskId={task_id} title={`Cloning to ${address}`} onDone={finished} />
      {ended && (
        <div class="app-actions" role="status">
          {url && (
            <a class="btn btn-primary" href={url} target="_blank" rel="noopener">
              Open {url}
            </a>
          )}
          <a class="btn btn-secondary" href={`#/apps/${app_id}`} onClick={onClose}>
            Go to the copy
          </a>
        </div>
      )}
    </div>
  );
}

export function CloneDialog({ app, titles, open, onClose }) {
  const [cloned, setCloned] = useState(null);
  const choices = useAsync(async () => {
    if (!open) return null;
    const [domains, apps] = await Promise.all([get("/domains"), get("/apps")]);
    return { domains: domains.items, platform: platformDomain(apps.items, domains.items) };
  }, [open]);
  const close = () => {
    setCloned(null);
    onClose();
  };
  return (
    <Dialog title={`Clone ${app.location}`} open={open} onClose={close}>
      {open &&
        (cloned ? (
          <Cloning {...cloned} onClose={close} />
        ) : (
          <Loaded state={choices}>{(c) => <CloneForm app={app} {...c} titles={titles} onCloned={setCloned} />}</Loaded>
        ))}
    </Dialog>
  );
}

// -- uninstall --------------------------------------------------------------------------------

/** Whether the app is going or gone. */
async function uninstalling(appId) {
  try {
    return (await get(`/apps/${appId}`)).state === "pending_uninstall";
  } catch (e) {
    return e.status === 404;
  }
}

function UninstallForm({ app }) {
  const form = useForm({ confirm: "" });
  const focus = useFirstFocus();
  const uninstall = form.submit(async () => {
    try {
      await del(`/apps/${app.app_id}`);
    } catch (e) {
      if (!(e.status === 0 && (await eventually(() => uninstalling(app.app_id))))) throw e;
    }
    navigate("/apps");
  });
  return (
    <form ref={focus} onSubmit={uninstall} noValidate>
      <FormError error={form.errors._form} />
      <p>
        This removes <strong>{app.url || app.location}</strong>: its container, its data, its databases and credentials. Its snapshots go
        too. This cannot be undone.
      </p>
      <Field label={`Type ${app.location} to confirm`} {...form.bind("confirm")} autocomplete="off" spellcheck={false} />
      <button type="submit" class="btn btn-danger" disabled={form.values.confirm !== app.location || form.busy}>
        {form.busy ? "Working…" : "Uninstall"}
      </button>
    </form>
  );
}

export function UninstallDialog({ app, open, onClose }) {
  return (
    <Dialog title={`Uninstall ${app.location}`} open={open} onClose={onClose}>
      {open && <UninstallForm app={app} />}
    </Dialog>
  );
}

// -- snapshots --------------------------------------------------------------------------------

function RestoreDialog({ app, snapshot, onClose, onStarted }) {
  const form = useForm({});
  const restore = form.submit(async () => {
    const started = await post(`/apps/${app.app_id}/restore`, { snapshot_id: snapshot.snapshot_id });
    onStarted(started.task_id, `Restoring ${app.location} to the snapshot of ${formatTime(snapshot.created_at)}`);
    onClose();
  });
  return (
    <Dialog title={`Restore ${app.location}`} open onClose={onClose}>
      <form onSubmit={restore} noValidate>
        <FormError error={form.errors._form} />
        <p>
          Restore {app.location} to the snapshot of <strong>{formatTime(snapshot.created_at)}</strong> (version {snapshot.version})? The
          app's data changed since then is replaced by the snapshot's.
        </p>
        <div class="app-actions">
          <Submit busy={form.busy} kind="danger">
            Restore
          </Submit>
          <button type="button" class="btn btn-secondary" onClick={onClose}>
            Cancel
          </button>
        </div>
      </form>
    </Dialog>
  );
}

const SNAPSHOTS_POLL_MS = 15000;
const REASONS = { manual: "taken by hand", update: "before an update" };

export function Snapshots({ app, version, onStarted }) {
  const list = usePolled(() => get(`/apps/${app.app_id}/snapshots`), SNAPSHOTS_POLL_MS, [app.app_id, version]);
  const [restoring, setRestoring] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const take = async () => {
    setBusy(true);
    setError(null);
    try {
      const started = await act(`/apps/${app.app_id}/snapshots`);
      onStarted(started.task_id, `Taking a snapshot of ${app.location}`);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section class="panel" aria-labelledby="snapshots-head">
      <div class="section-head">
        <h2 id="snapshots-head">Snapshots</h2>
        <button type="button" class="btn btn-secondary" onClick={take} disabled={busy || app.state !== "installed"}>
          Take snapshot now
        </button>
      </div>
      <ErrorNote error={error} />
      <Stale error={list.stale} />
      <Loaded state={list} what="Loading snapshots">
        {({ items }) =>
          items.length ? (
            <ListTable columns={["Taken", "Version", "Why", "Size"]} actions>
              {items.map((s) => (
                <tr key={s.snapshot_id}>
                  <td data-label="Taken">{formatTime(s.created_at)}</td>
                  <td data-label="Version">{s.version}</td>
                  <td data-label="Why">{REASONS[s.reason] || s.reason}</td>
                  <td data-label="Size">{formatBytes(s.size_bytes)}</td>
                  <td data-label="" class="actions">
                    <button
                      type="button"
                      class="btn btn-secondary"
                      aria-label={`Restore the snapshot of ${formatTime(s.created_at)}`}
                      onClick={() => setRestoring(s)}
                      disabled={app.state.startsWith("pending_")}
                    >
                      Restore
                    </button>
                  </td>
                </tr>
              ))}
            </ListTable>
          ) : (
            <p class="muted">No snapshots yet. One is taken before every update.</p>
          )
        }
      </Loaded>
      {restoring && <RestoreDialog app={app} snapshot={restoring} onClose={() => setRestoring(null)} onStarted={onStarted} />}
    </section>
  );
}
