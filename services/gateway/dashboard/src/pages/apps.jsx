// Installed apps: the list everyone sees (their apps, with links), and for administrators each
// app's page: facts, start/stop, configure, update, snapshots, clone, uninstall and its log.
import { useEffect, useRef, useState } from "preact/hooks";
import { get } from "../api.js";
import { useSession } from "../session.js";
import { Badge, ErrorNote, Loaded, PageHead, TaskProgress, formatBytes, formatTime, useAsync } from "../ui/common.jsx";
import { AppBadges, AppIcon, Stale, accessText, act, eventually, isPending, useCatalogIndex, usePolled } from "./apps_common.jsx";
import { LogViewer } from "./apps_logs.jsx";
import { AppBackups } from "./backups.jsx";
import { AppFirewall } from "./app_firewall.jsx";
import { AutoUpdatePanel, AutoUpdateToggle } from "./apps_autoupdate.jsx";
import { CloneDialog, ConfigureDialog, Snapshots, UninstallDialog, UpdateDialog } from "./apps_manage.jsx";

const POLL_MS = 4000;

function OpenLink({ app, title }) {
  return (
    <a class="btn btn-primary" href={app.url} target="_blank" rel="noopener">
      Open<span class="sr-only"> {title} ({app.location})</span>
    </a>
  );
}

/** Run one operation, report its error, and load the app again either way. When the answer was
 * lost on the way (status 0), `happened()` asks the server whether the operation took effect. */
function useAction(reload) {
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  const run = async (name, fn, happened) => {
    setBusy(name);
    setError(null);
    try {
      await fn();
    } catch (e) {
      if (!(e.status === 0 && happened && (await eventually(happened)))) setError(e);
    } finally {
      setBusy(null);
      reload();
    }
  };
  return { busy, error, run };
}

// -- the list ---------------------------------------------------------------------------------

function AppCard({ app, meta, admin, reload }) {
  const title = meta?.title || app.manifest_id;
  const action = useAction(reload);
  const usable = app.state === "installed" && app.run_state === "running";
  return (
    <li class="card">
      <div class="card-head">
        <AppIcon src={meta?.icon_url} title={title} />
        <div>
          <h2>{admin ? <a href={`#/apps/${app.app_id}`}>{title}</a> : title}</h2>
          <span class="muted address">
            {app.location}.{app.domain}
          </span>
        </div>
      </div>
      {admin ? <AppBadges app={app} /> : !usable && <Badge kind="warn">not available right now</Badge>}
      {admin && app.task_id && isPending(app) && <TaskProgress key={app.task_id} taskId={app.task_id} onDone={reload} />}
      {app.state === "error" && (
        <div class="app-error">
          <p>{app.error || "The last operation failed."}</p>
          {admin && (
            <button
              type="button"
              class="btn btn-secondary"
              disabled={action.busy !== null}
              onClick={() => action.run("repair", () => act(`/apps/${app.app_id}/repair`))}
            >
              Repair<span class="sr-only"> {app.location}</span>
            </button>
          )}
        </div>
      )}
      <ErrorNote error={action.error} />
      <div class="card-foot">
        {app.url && <OpenLink app={app} title={title} />}
        {admin && (
          <a class="btn btn-secondary" href={`#/apps/${app.app_id}`}>
            Manage<span class="sr-only"> {app.location}</span>
          </a>
        )}
      </div>
    </li>
  );
}

export function InstalledApps() {
  const { me } = useSession();
  const apps = usePolled(() => get("/apps"), POLL_MS, []);
  const catalog = useCatalogIndex();
  return (
    <>
      <PageHead title="Apps">
        {me.is_admin && (
          <a class="btn btn-primary" href="#/store">
            Install an app
          </a>
        )}
      </PageHead>
      <Stale error={apps.stale} />
      <Loaded state={apps} what="Loading apps">
        {({ items }) =>
          items.length ? (
            <ul class="cards">
              {items.map((a) => (
                <AppCard key={a.app_id} app={a} meta={catalog[a.manifest_id]} admin={me.is_admin} reload={apps.reload} />
              ))}
            </ul>
          ) : me.is_admin ? (
            <p class="notice">
              No apps are installed yet. <a href="#/store">Find one in the app store</a>.
            </p>
          ) : (
            <p class="notice">No apps are shared with you yet.</p>
          )
        }
      </Loaded>
      {me.is_admin && <AutoUpdatePanel />}
    </>
  );
}

// -- one app ----------------------------------------------------------------------------------

const OPERATION = {
  install: "Installing",
  configure: "Configuring",
  update: "Updating",
  restore: "Restoring",
  uninstall: "Uninstalling",
  repair: "Repairing",
  clone: "Cloning",
};

/** The tasks this page follows: those it started and the one the app reports running. */
function useTasks(app, onEnded) {
  const [tasks, setTasks] = useState([]);
  const seen = useRef(new Set());
  const track = (id, title) => {
    if (seen.current.has(id)) return;
    seen.current.add(id);
    setTasks((t) => [...t, { id, title, state: "running" }]);
  };
  useEffect(() => {
    if (app.task_id && isPending(app)) track(app.task_id, `${OPERATION[app.operation] || "Working on"} ${app.location}`);
  }, [app.task_id]);
  const ended = (id, state) => {
    setTasks((t) => t.map((x) => (x.id === id ? { ...x, state } : x)));
    onEnded();
  };
  const dismiss = (id) => setTasks((t) => t.filter((x) => x.id !== id));
  return { tasks, track, ended, dismiss };
}

function Tasks({ tasks, ended, dismiss }) {
  if (!tasks.length) return null;
  return (
    <section class="panel tasks" aria-label="Operations">
      {tasks.map((t) => (
        <div class="task-row" key={t.id}>
          <TaskProgress taskId={t.id} title={t.title} onDone={(state) => ended(t.id, state)} />
          {t.state !== "running" && (
            <button type="button" class="btn btn-ghost" onClick={() => dismiss(t.id)}>
              Dismiss<span class="sr-only"> {t.title}</span>
            </button>
          )}
        </div>
      ))}
    </section>
  );
}

function Facts({ app, groups, users }) {
  return (
    <dl class="facts">
      <dt>Address</dt>
      <dd>
        <a href={app.url} target="_blank" rel="noopener">
          {app.url}
        </a>
      </dd>
      <dt>Version</dt>
      <dd>
        {app.version}
        {app.target_version && app.target_version !== app.version && <span class="muted"> (going to {app.target_version})</span>}
      </dd>
      <dt>State</dt>
      <dd>
        <AppBadges app={app} />
      </dd>
      <dt>Memory</dt>
      <dd>{formatBytes(app.memory_bytes)}</dd>
      {app.ports?.length > 0 && (
        <>
          <dt>Ports on the server</dt>
          <dd>
            {app.ports.map((p, i) => (
              <span key={`${p.protocol}:${p.name}`}>
                {i > 0 && ", "}
                {p.host_port}/{p.protocol} ({p.title || p.name})
              </span>
            ))}
          </dd>
        </>
      )}
      <dt>Who can open it</dt>
      <dd>{accessText(app.access, groups, users)}</dd>
      <dt>Installed</dt>
      <dd>{formatTime(app.created_at)}</dd>
      {app.clone_of && (
        <>
          <dt>Copy of</dt>
          <dd>
            <a href={`#/apps/${app.clone_of}`}>the original app</a>
          </dd>
        </>
      )}
    </dl>
  );
}

function AppPage({ app, meta, people, catalog, reload }) {
  const [dialog, setDialog] = useState(null);
  const [tick, setTick] = useState(0);
  const { tasks, track, ended, dismiss } = useTasks(app, () => {
    reload();
    setTick((n) => n + 1);
  });
  const action = useAction(reload);
  const title = meta?.title || app.manifest_id;
  const idle = app.state === "installed";
  const running = app.run_state === "running";
  const close = () => setDialog(null);
  const started = (id, what) => {
    track(id, what);
    reload();
  };
  const { groups, users } = people;
  const repair = () =>
    action.run("repair", async () => {
      const { task_id } = await act(`/apps/${app.app_id}/repair`);
      track(task_id, `Repairing ${app.location}`);
    });
  const runState = (name) =>
    action.run(
      name,
      () => act(`/apps/${app.app_id}/${name}`),
      async () => (await get(`/apps/${app.app_id}`)).run_state === (name === "stop" ? "stopped" : "running"),
    );
  const stateButton = (name, label, doing) => (
    <button type="button" class="btn btn-secondary" disabled={!idle || action.busy !== null} onClick={() => runState(name)}>
      {action.busy === name ? doing : label}
    </button>
  );

  return (
    <div class="apps-page">
      <p>
        <a href="#/apps">← Apps</a>
      </p>
      <div class="page-head">
        <div class="card-head">
          <AppIcon src={meta?.icon_url} title={title} size="large" />
          <div>
            <h1>{title}</h1>
            <span class="muted address">
              {app.location}.{app.domain}
            </span>
          </div>
        </div>
        <div class="page-actions">
          <OpenLink app={app} title={title} />
          {running ? (
            <>
              {stateButton("stop", "Stop", "Stopping…")}
              {stateButton("restart", "Restart", "Restarting…")}
            </>
          ) : (
            stateButton("start", "Start", "Starting…")
          )}
        </div>
      </div>
      <ErrorNote error={action.error} />
      <Tasks tasks={tasks} ended={ended} dismiss={dismiss} />
      {app.awaiting_approval && (
        <div class="notice section-head" role="status">
          <span>
            The update to {app.target_version} waits for your approval. A snapshot is taken before it is applied.
          </span>
          <button
            type="button"
            class="btn btn-primary"
            disabled={action.busy !== null}
            onClick={() => action.run("approve", () => act(`/apps/${app.app_id}/update/approve`))}
          >
            Approve update
          </button>
        </div>
      )}
      {app.state === "installed" && app.error && (
        <p class="notice" role="status">
          The last operation failed: {app.error}
        </p>
      )}
      {app.state === "error" && (
        <div class="form-error section-head" role="alert">
          <span>{app.error || "The last operation failed."}</span>
          <button type="button" class="btn btn-secondary" disabled={action.busy !== null} onClick={repair}>
            Repair
          </button>
        </div>
      )}
      <div class="grid-2">
        <section class="panel" aria-labelledby="facts-head">
          <h2 id="facts-head">About this app</h2>
          <Facts app={app} groups={groups} users={users} />
        </section>
        <section class="panel" aria-labelledby="manage-head">
          <h2 id="manage-head">Manage</h2>
          <div class="manage-buttons">
            <button type="button" class="btn btn-secondary" disabled={!idle} onClick={() => setDialog("configure")}>
              Configure
            </button>
            <button type="button" class="btn btn-secondary" disabled={!idle} onClick={() => setDialog("update")}>
              Update
            </button>
            <button type="button" class="btn btn-secondary" disabled={!idle} onClick={() => setDialog("clone")}>
              Clone
            </button>
            <button type="button" class="btn btn-danger" disabled={isPending(app) && !app.awaiting_approval} onClick={() => setDialog("uninstall")}>
              Uninstall
            </button>
          </div>
          {!idle && <p class="hint">Most changes wait until the app is installed and idle.</p>}
          <AutoUpdateToggle app={app} />
        </section>
      </div>
      <Snapshots app={app} version={tick} onStarted={started} />
      <AppBackups app={app} version={tick} onStarted={started} />
      <AppFirewall app={app} />
      <LogViewer appId={app.app_id} />
      <ConfigureDialog
        open={dialog === "configure"}
        onClose={close}
        app={app}
        singleUser={!!meta?.single_user}
        groups={groups}
        users={users}
        titles={catalog}
        onStarted={started}
      />
      <UpdateDialog open={dialog === "update"} onClose={close} app={app} onStarted={started} />
      <CloneDialog open={dialog === "clone"} onClose={close} app={app} titles={catalog} />
      <UninstallDialog open={dialog === "uninstall"} onClose={close} app={app} />
    </div>
  );
}

export function AppDetail({ appId }) {
  const { me } = useSession();
  if (!me.is_admin)
    return (
      <p class="notice">
        Only administrators manage apps. <a href="#/apps">Back to your apps</a>
      </p>
    );
  return <AdminAppDetail key={appId} appId={appId} />;
}

function AdminAppDetail({ appId }) {
  const app = usePolled(() => get(`/apps/${appId}`), POLL_MS, [appId]);
  const people = useAsync(async () => {
    const [groups, users] = await Promise.all([get("/groups"), get("/users")]);
    return { groups: groups.items, users: users.items };
  }, []);
  const catalog = useCatalogIndex();
  if (app.error && app.error.status === 404)
    return (
      <p class="notice">
        This app is not installed (any more). <a href="#/apps">Back to the apps</a>
      </p>
    );
  return (
    <>
      <Stale error={app.stale} />
      <Loaded state={app} what="Loading the app">
        {(a) => (
          <Loaded state={people}>
            {(p) => <AppPage app={a} meta={catalog[a.manifest_id]} people={p} catalog={catalog} reload={app.reload} />}
          </Loaded>
        )}
      </Loaded>
    </>
  );
}
