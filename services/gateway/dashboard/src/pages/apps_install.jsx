// The install dialog (store card and store page): location with a live availability check,
// domain, version, who can open it, memory, the server's ports the app publishes (each at its
// default); then the install task's progress and the app's links.
import { useState } from "preact/hooks";
import { get, post } from "../api.js";
import { navigate } from "../router.js";
import { Dialog, Loaded, TaskProgress, useAsync } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import {
  Availability,
  DomainSelect,
  MIB,
  PortFields,
  WhoCanOpen,
  accessBody,
  memoryBytes,
  platformDomain,
  portValues,
  portsBody,
  useAvailability,
  useCatalogIndex,
  useFirstFocus,
} from "./apps_common.jsx";

/** Everything the install form offers: the app's versions, domains, groups, users, apps. */
async function loadChoices(manifestId) {
  const [manifest, domains, groups, users, apps] = await Promise.all([
    get(`/catalog/${encodeURIComponent(manifestId)}`),
    get("/domains"),
    get("/groups"),
    get("/users"),
    get("/apps"),
  ]);
  return {
    manifest,
    domains: domains.items,
    groups: groups.items,
    users: users.items,
    platform: platformDomain(apps.items, domains.items),
  };
}

export function InstallDialog({ manifestId, title, open, onClose }) {
  return (
    <Dialog title={`Install ${title}`} open={open} onClose={onClose}>
      {open && <Install manifestId={manifestId} onClose={onClose} />}
    </Dialog>
  );
}

function Install({ manifestId, onClose }) {
  const choices = useAsync(() => loadChoices(manifestId), [manifestId]);
  const [started, setStarted] = useState(null);
  if (started) return <Installing {...started} onClose={onClose} />;
  return (
    <Loaded state={choices} what="Loading the app's details">
      {(c) => <InstallForm {...c} onStarted={setStarted} />}
    </Loaded>
  );
}

function InstallForm({ manifest, domains, groups, users, platform, onStarted }) {
  const titles = useCatalogIndex();
  const focus = useFirstFocus();
  const versions = [...(manifest.versions || [manifest.version])].reverse();
  const single = manifest.single_user;
  const form = useForm({
    location: "",
    domain: "",
    version: manifest.version,
    access: "all",
    groups: [],
    people: [],
    user_id: users[0]?.user_id || "",
    memory_bytes: String(Math.round(manifest.memory_limit / MIB)),
    ...portValues(manifest.ports, (p) => p.default_host_port),
  });
  const { values } = form;
  const domain = values.domain || platform;
  const answer = useAvailability(values.location, domain, titles);

  const install = form.submit(async (v) => {
    let memory, ports;
    try {
      memory = memoryBytes(v.memory_bytes);
      ports = portsBody(v, manifest.ports); // an empty one: the API says it needs a port
    } catch (e) {
      form.setErrors({ [e.field || "memory_bytes"]: e.message });
      return;
    }
    const body = {
      manifest_id: manifest.id,
      location: v.location.trim(),
      version: v.version,
      access: single ? { all_users: false, user_ids: [v.user_id] } : accessBody(v.access, v.groups, v.people),
      memory_bytes: memory,
      ...ports,
    };
    if (v.domain) body.domain = v.domain;
    const started = await post("/apps", body);
    onStarted({ ...started, title: manifest.title, address: `${body.location}.${domain}`, message: manifest.post_install_message });
  });

  return (
    <form ref={focus} onSubmit={install} noValidate>
      <FormError error={form.errors._form} />
      <div class="field-group">
        <Field
          label="Location"
          {...form.bind("location")}
          onValue={(x) => form.set("location", x.trim().toLowerCase())}
          autocomplete="off"
          spellcheck={false}
          placeholder="e.g. blog"
          hint={`The app's address: ${values.location || "<location>"}.${domain}`}
        />
        <Availability answer={answer} />
      </div>
      <DomainSelect bind={form.bind("domain")} domains={domains} platform={platform} />
      <Field label="Version" type="select" {...form.bind("version")}>
        {versions.map((v, i) => (
          <option key={v} value={v}>
            {i === 0 ? `${v} (newest)` : v}
          </option>
        ))}
      </Field>
      <WhoCanOpen form={form} single={single} users={users} groups={groups} hint={`${manifest.title} is for one user.`} />
      <Field
        label="Memory (MiB)"
        type="number"
        min="32"
        step="1"
        inputMode="numeric"
        {...form.bind("memory_bytes")}
        hint={`${manifest.title} asks for ${Math.round(manifest.memory_limit / MIB)} MiB. From 32 MiB to 64 GiB (65536 MiB).`}
      />
      <PortFields ports={manifest.ports} form={form} hint={(p) => (p.default_host_port ? `Suggested: ${p.default_host_port}.` : "Choose one.")} />
      <Submit busy={form.busy}>Install</Submit>
    </form>
  );
}

/** The install task's progress, then where the app is. */
function Installing({ app_id, task_id, title, address, message, onClose }) {
  const [done, setDone] = useState(null);
  const finished = async (state) => {
    if (state !== "succeeded") return setDone({ state });
    try {
      const app = await get(`/apps/${app_id}`);
      setDone({ state, url: app.url });
    } catch (e) {
      setDone({ state, error: e.message });
    }
  };
  return (
    <div class="app-stack">
      <TaskProgress taskId={task_id} title={`Installing ${title} at ${address}`} onDone={finished} />
      {done && done.state === "succeeded" && (
        <div class="ok-note" role="status">
          <p>{title} is installed.</p>
          {message && <p>{message}</p>}
          {done.error && <p class="field-error">{done.error}</p>}
        </div>
      )}
      <div class="app-actions">
        {done?.url && (
          <a class="btn btn-primary" href={done.url} target="_blank" rel="noopener">
            Open {done.url}
          </a>
        )}
        {done ? (
          <a class="btn btn-secondary" href={`#/apps/${app_id}`} onClick={onClose}>
            Go to the app
          </a>
        ) : (
          <button
            type="button"
            class="btn btn-secondary"
            onClick={() => {
              onClose();
              navigate("/apps");
            }}
          >
            Close and follow it on the Apps page
          </button>
        )}
      </div>
    </div>
  );
}
