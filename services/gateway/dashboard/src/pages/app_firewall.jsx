// An app's firewall on its page (administrators): its published ports, who may reach them (an
// allow list, never on trial: it cannot lock the administrator out), and whether it may reach
// the internet.
import { useState } from "preact/hooks";
import { get, put } from "../api.js";
import { ErrorNote, Loaded, useAsync } from "../ui/common.jsx";
import { AllowList } from "./firewall.jsx";

function Ports({ view }) {
  const ports = [...view.tcp_ports.map((p) => `${p}/TCP`), ...view.udp_ports.map((p) => `${p}/UDP`)];
  if (!ports.length) return <p class="muted">It publishes no ports of its own: only its web address reaches it.</p>;
  return (
    <p>
      Published ports: <strong>{ports.join(", ")}</strong>
      {view.open ? "" : <span class="muted"> (closed while the app is stopped)</span>}
    </p>
  );
}

function Internet({ view, onChanged }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const change = async (e) => {
    const cut = e.currentTarget.checked;
    setBusy(true);
    setError(null);
    try {
      await put(`/apps/${view.app_id}/internet`, { internet: !cut });
      await onChanged();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="field">
      <label>
        <input type="checkbox" checked={!view.internet} disabled={busy} onChange={change} /> No internet
      </label>
      <p class="hint">The app then reaches only what Homeport gives it (its addons), nothing outside this server.</p>
      <ErrorNote error={error} />
    </div>
  );
}

/** The "Firewall" panel of an app's page. */
export function AppFirewall({ app }) {
  const state = useAsync(() => get(`/apps/${app.app_id}/firewall`), [app.app_id]);
  if (state.error && state.error.status === 404) return null; // not installed as far as the firewall knows
  return (
    <section class="panel stack" aria-labelledby="app-firewall-head">
      <h2 id="app-firewall-head">Firewall</h2>
      <Loaded state={state} what="Asking the firewall">
        {(view) => (
          <>
            <Ports view={view} />
            {view.tcp_ports.length + view.udp_ports.length > 0 && (
              <AllowList
                scope={`app:${view.app_id}`}
                title="its published ports"
                heading="Who may reach its published ports"
                label="Addresses that may reach its published ports"
                hint="One address or CIDR range per line. Empty: everyone. Its web address is not affected (see Access)."
                list={{ cidrs: view.allow, trial: null }}
                onChanged={state.reload}
              />
            )}
            <Internet view={view} onChanged={state.reload} />
          </>
        )}
      </Loaded>
    </section>
  );
}
